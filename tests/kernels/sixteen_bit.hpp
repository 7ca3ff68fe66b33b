// 16-bit element types for the tests: the storage bits, converted through dhp/float16.hpp
// (round to nearest even), so that test helpers written for float and double (vectors,
// static_cast from and to double) work on bf16 and f16 data as well. Shared by the kernel
// and runtime tests.
#pragma once

#include <cstdint>
#include <type_traits>

#include "dhp/float16.hpp"
#include "dhp/kernels.hpp"

namespace dhp::testing {

struct BF16 {
  std::uint16_t bits = 0;
  BF16() = default;
  BF16(double x) : bits(float_to_bf16(static_cast<float>(x))) {}  // NOLINT: implicit on purpose
  operator double() const { return bf16_to_float(bits); }         // NOLINT
};

struct F16 {
  std::uint16_t bits = 0;
  F16() = default;
  F16(double x) : bits(float_to_f16(static_cast<float>(x))) {}  // NOLINT
  operator double() const { return f16_to_float(bits); }        // NOLINT
};

// The accumulator type of element type T (lse, merged outputs, accumulator_grads).
template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
constexpr kernels::DType dtype_of() {
  if constexpr (std::is_same_v<T, double>) return kernels::DType::F64;
  if constexpr (std::is_same_v<T, float>) return kernels::DType::F32;
  if constexpr (std::is_same_v<T, BF16>) return kernels::DType::BF16;
  return kernels::DType::F16;
}

// Unit roundoff of T: the largest relative error of one rounding to nearest.
template <typename T>
constexpr double unit_roundoff() {
  if constexpr (std::is_same_v<T, double>) return 0x1p-53;
  if constexpr (std::is_same_v<T, float>) return 0x1p-24;
  if constexpr (std::is_same_v<T, BF16>) return 0x1p-8;
  return 0x1p-11;
}

// x rounded to T and back: how a buffer of T stores it.
template <typename T>
double round_to(double x) {
  return static_cast<double>(static_cast<T>(x));
}

}  // namespace dhp::testing
