// Runs a kernel on the CPU: one std::thread per CUDA thread of a block and a real barrier for
// __syncthreads, so the kernels' shared-memory reductions and tiles run on genuinely
// concurrent threads rather than in an order arranged by hand. Blocks run one after another,
// which CUDA allows (blocks of a launch may not wait on each other).
//
// A __syncthreads that not every thread of a block reaches hangs here (on a GPU it is
// undefined); scripts/test-cuda-emulated runs each test under a timeout and reports it.
// This header holds the built-ins' storage: each test program is one translation unit.
#pragma once
#include "cuda_host.h"

#include <barrier>
#include <thread>
#include <vector>

thread_local uint3 threadIdx, blockIdx;
uint3 blockDim, gridDim;

static std::barrier<>* sync_barrier;
void __syncthreads() { sync_barrier->arrive_and_wait(); }

// kernel<<<dim3(grid_x, grid_y), block>>>, with `kernel` a closure that calls the kernel with
// its arguments. The block's threads are started once and walk every block in turn.
template <class Kernel>
void launch(unsigned int grid_x, unsigned int grid_y, unsigned int block, Kernel kernel) {
    blockDim = {block, 1, 1};
    gridDim = {grid_x, grid_y, 1};
    std::barrier<> in_block(block), between_blocks(block);
    sync_barrier = &in_block;
    std::vector<std::thread> threads;
    for (unsigned int t = 0; t < block; t++) {
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned int y = 0; y < grid_y; y++) {
                for (unsigned int x = 0; x < grid_x; x++) {
                    blockIdx = {x, y, 0};
                    kernel();
                    // The next block reuses the __shared__ arrays: wait until this one is done.
                    between_blocks.arrive_and_wait();
                }
            }
        });
    }
    for (std::thread& t : threads) t.join();
}
