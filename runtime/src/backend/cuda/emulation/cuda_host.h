// The CUDA built-ins the kernels in ../*.cu use, for g++ on the CPU. No GPU runs these kernels
// in CI (NVRTC only compiles them there), so scripts/test-cuda-emulated compiles them as C++
// against this header and runs them, one std::thread per CUDA thread (launch.h).
//
// Only declarations live here: the kernel sources are also compiled on their own with
// -Werror, and that build should see what NVRTC sees (math functions in the global namespace,
// no C++ library headers).
#pragma once
#include <math.h>

struct uint3 {
    unsigned int x, y, z;
};
extern thread_local uint3 threadIdx, blockIdx;
extern uint3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads)
// Blocks run one at a time, so one copy of each file-scope __shared__ array serves them all.
#define __shared__

void __syncthreads();
// Every thread of a block is a CPU thread, and the barrier in __syncthreads already orders
// their memory; the kernels only fence before a barrier.
inline void __threadfence_block() {}

inline float __uint_as_float(unsigned int u) {
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    __builtin_memcpy(&u, &f, sizeof u);
    return u;
}
