// convert_dtype on the CPU: f32 <-> bf16/f16, round to nearest even, ties, subnormals,
// overflow to infinity, signed zero.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "dhp/kernels.hpp"

namespace dhp::kernels {
namespace {

// The conversion launcher behind bf16/f16 outputs: exact where representable, round to
// nearest even otherwise, specials kept.
TEST(Convert, AccumulatorToHalfPrecisionAndBack) {
  const std::vector<float> values{0.0f,
                                  -0.0f,
                                  1.0f,
                                  -2.5f,
                                  1.0f + 1.0f / 256,
                                  1.0f + 3.0f / 512,
                                  65504.0f,
                                  65520.0f,
                                  1e-7f,
                                  6.1035156e-05f,
                                  std::numeric_limits<float>::infinity()};
  auto round_trip = [&](DType dtype) {
    std::vector<std::uint16_t> half(values.size());
    std::vector<float> back(values.size());
    ConvertArgs args;
    args.src_dtype = DType::F32;
    args.dst_dtype = dtype;
    args.count = static_cast<std::int64_t>(values.size());
    args.src = values.data();
    args.dst = half.data();
    EXPECT_EQ(convert_dtype(args), Status::Ok) << last_error();
    args.src_dtype = dtype;
    args.dst_dtype = DType::F32;
    args.src = half.data();
    args.dst = back.data();
    EXPECT_EQ(convert_dtype(args), Status::Ok) << last_error();
    return std::make_pair(half, back);
  };
  const auto [bf16, bf16_back] = round_trip(DType::BF16);
  EXPECT_EQ(bf16[2], 0x3f80);                  // 1.0
  EXPECT_EQ(bf16[3], 0xc020);                  // -2.5
  EXPECT_EQ(bf16_back[4], 1.0f);               // 1 + 2^-8: a tie, rounds to even (1.0)
  EXPECT_EQ(bf16_back[5], 1.0f + 1.0f / 128);  // 1 + 0.75 ulp (2^-7) rounds up to 1 + 2^-7
  EXPECT_EQ(bf16_back[1], -0.0f);
  EXPECT_TRUE(std::signbit(bf16_back[1]));
  const auto [f16, f16_back] = round_trip(DType::F16);
  EXPECT_EQ(f16[2], 0x3c00);                  // 1.0
  EXPECT_EQ(f16[3], 0xc100);                  // -2.5
  EXPECT_EQ(f16_back[4], 1.0f + 1.0f / 256);  // exact in f16 (10 mantissa bits)
  EXPECT_EQ(f16_back[5], 1.0f + 3.0f / 512);  // exact too
  EXPECT_EQ(f16[6], 0x7bff);                  // 65504, the largest half
  EXPECT_EQ(f16[7], 0x7c00);                  // 65520 ties to even: infinity
  EXPECT_EQ(f16[8], 0x0002);                  // 1e-7 = 1.68 x 2^-24: subnormal 2
  EXPECT_EQ(f16[9], 0x0400);                  // 2^-14, the smallest normal
  EXPECT_EQ(f16[10], 0x7c00);
}

}  // namespace
}  // namespace dhp::kernels
