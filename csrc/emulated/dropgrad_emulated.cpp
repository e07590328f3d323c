// The cuda-emulated backend: the CUDA kernels of csrc/cuda (kernels.cuh) and their host code
// (host_ops.h), compiled by g++ and run on CPU tensors. HostLaunch executes every launch over its
// full grid, block by block and thread by thread, so the grid-stride loops, the vector and tail
// paths and the multi-tensor lists run as the GPU would run them. For tests and debugging: slow.
#define DG_EMULATOR
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>
#include <vector>

#include "../cuda/kernels.cuh"
#include "../cuda/host_ops.h"
#include "../namespaces.h"
#include "../ops.h"

namespace dg_cuda {
namespace {

std::atomic<int64_t> max_grid{kMaxGrid};  // lowered by tests so grid-stride loops take several trips
std::atomic<bool> misaligned{false};
std::mutex log_mutex;
std::vector<int64_t> launch_log;  // grid of every launch since the last read

}  // namespace

void emulator_check_aligned(const void* p, size_t bytes) {
  if (!kernels::aligned(p, bytes)) misaligned = true;
}

struct HostLaunch {
  int64_t max_blocks;
  template <class K>
  void operator()(int64_t grid, const K& kernel) const {
    // Threads of a launch are independent (no shared memory, no barriers), so any order is a
    // valid schedule; blocks run in parallel, threads of a block in order.
    misaligned = false;
    at::parallel_for(0, grid, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t t = 0; t < kThreads; ++t) kernel(Idx{b, t, grid, kThreads});
      }
    });
    {
      std::lock_guard<std::mutex> lock(log_mutex);
      launch_log.push_back(grid);
    }
    TORCH_CHECK(!misaligned, "cuda-emulated: a kernel made a misaligned vector access (on a GPU: "
                "cudaErrorMisalignedAddress)");
  }
};

namespace {

struct Emulated {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  static HostLaunch launch() { return {max_grid.load()}; }
};

// Test hooks: the grid cap of grid-stride launches (<= 0 restores kMaxGrid; returns the previous
// cap), and the grids launched since the last call.
int64_t grid_limit(int64_t blocks) { return max_grid.exchange(blocks > 0 ? blocks : kMaxGrid); }

std::vector<int64_t> launches() {
  std::lock_guard<std::mutex> lock(log_mutex);
  std::vector<int64_t> out;
  out.swap(launch_log);
  return out;
}

}  // namespace
}  // namespace dg_cuda

TORCH_LIBRARY(dropgrad_emulated, m) {
  dg::define_ops(m);
  m.def("grid_limit(int blocks) -> int", &dg_cuda::grid_limit);
  m.def("launches() -> int[]", &dg_cuda::launches);
}

TORCH_LIBRARY_IMPL(dropgrad_emulated, CPU, m) { dg_cuda::register_kernels<dg_cuda::Emulated>(m); }
TORCH_LIBRARY_IMPL(dropgrad_emulated, Autograd, m) { dg::register_autograd(m, dg::kEmulated); }
TORCH_LIBRARY_IMPL(dropgrad_emulated, ADInplaceOrView, m) { dg::register_inplace_or_view(m, dg::kEmulated); }
TORCH_LIBRARY_IMPL(dropgrad_emulated, FuncTorchBatched, m) { dg::register_batching(m, dg::kEmulated); }
