# Sourced by the benchmark scripts: sets bench_bin to llama.cpp's llama-bench, building it
# once into target/llama.cpp. Needs $root (the repository).
#
# llama.cpp comes from the llama-cpp-python sdist on PyPI (it carries the full source), built
# with explicit AVX2/AVX-512 flags: GGML_NATIVE would enable AMX, which crashes on these CPUs.
llama_dir="$root/target/llama.cpp"
bench_bin="$llama_dir/build/bin/llama-bench"
if [ ! -x "$bench_bin" ]; then
  command -v cmake >/dev/null || { echo "cmake is needed: apt-get install cmake" >&2; exit 1; }
  mkdir -p "$llama_dir"
  if [ ! -f "$llama_dir/src/CMakeLists.txt" ]; then
    echo "fetching llama.cpp source (llama-cpp-python sdist from PyPI)..." >&2
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" llama-cpp-python
    tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
    rm -rf "$llama_dir/src"
    mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$llama_dir/src"
    rm -rf "$tmp"
  fi
  # AVX-512 only where the CPU has it: a build with it dies of an illegal instruction on
  # AVX2-only machines (the AMD EPYC development machines have none).
  avx512=OFF
  grep -qw avx512f /proc/cpuinfo 2>/dev/null && avx512=ON
  avx512_vnni=OFF
  grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null && avx512_vnni=ON
  avx_vnni=OFF
  grep -qw avx_vnni /proc/cpuinfo 2>/dev/null && avx_vnni=ON
  echo "building llama-bench (a few minutes; AVX-512 $avx512)..." >&2
  cmake -S "$llama_dir/src" -B "$llama_dir/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=$avx512 -DGGML_AVX512_VNNI=$avx512_vnni -DGGML_AVX_VNNI=$avx_vnni -DGGML_BMI2=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DBUILD_SHARED_LIBS=OFF >"$llama_dir/build.log" 2>&1
  if ! cmake --build "$llama_dir/build" --target llama-bench -j "$(nproc)" >>"$llama_dir/build.log" 2>&1; then
    tail -20 "$llama_dir/build.log" >&2
    echo "llama-bench build failed; full log: $llama_dir/build.log" >&2
    exit 1
  fi
fi

