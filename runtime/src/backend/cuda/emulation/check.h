// What every emulated-kernel test shares: counted checks that report the first mismatches with
// the kernel's name, and seeded random inputs (the same on every run, so a failure repeats).
#pragma once
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <random>
#include <vector>

static std::mt19937 rng(42);
static long checks = 0, fails = 0;

// CHECK(condition, "kernel where: got …, want …", args…). The first few failures are printed
// (after the test file's base name and line); the rest only counted.
#define CHECK(ok, ...)                                                   \
    do {                                                                 \
        checks++;                                                        \
        if (!(ok) && fails++ < 5) {                                      \
            printf("%s:%d: ", strrchr("/" __FILE__, '/') + 1, __LINE__); \
            printf(__VA_ARGS__);                                         \
            printf("\n");                                                \
        }                                                                \
    } while (0)

static inline float urand(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

static inline std::vector<float> random_floats(size_t n, float lo = -1, float hi = 1) {
    std::vector<float> v(n);
    for (float& x : v) x = urand(lo, hi);
    return v;
}

// |got − want| within a relative tolerance (absolute near zero).
static inline bool near(double got, double want, double tol) { return fabs(got - want) <= tol * (1 + fabs(want)); }

// The last line of every test program; its exit status.
static inline int finish(const char* module) {
    if (fails == 0) {
        printf("%s: ok (%ld checks)\n", module, checks);
        return 0;
    }
    printf("%s: FAIL (%ld of %ld checks failed)\n", module, fails, checks);
    return 1;
}
