// LibTorch tensors through dhp's adapter: a tensor's kernel dtype, and the error that
// names a tensor of the wrong type. dhp/error.hpp brings fmt into a translation unit that
// sees LibTorch's include directories (the torch component puts dhp's fmt first).
#include <dhp/error.hpp>
#include <dhp/torch.hpp>

#include <cstdio>

int main() {
  const at::Tensor t = torch::ones({2, 3}, torch::kFloat64);
  const dhp::kernels::DType dtype = dhp::kernel_dtype(t, "t");
  dhp::check_tensor(t, "t", dhp::kernels::DType::F64, dhp::kernels::Device::CPU, {2, -1});
  bool ok = dtype == dhp::kernels::DType::F64 && dhp::scalar_type(dtype) == torch::kFloat64;
  try {
    dhp::kernel_dtype(torch::ones({2}, torch::kInt32), "ids");
    ok = false;
  } catch (const dhp::Error& e) {
    std::printf("consumer: %s\n", e.what());
  }
  std::printf("consumer: dhp::torch %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
