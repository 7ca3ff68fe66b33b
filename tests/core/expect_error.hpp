// Shared by the core tests: asserts that a call throws dhp::Error of a given kind whose
// message contains every expected fragment (the JSON path, the bad value, ...).
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>

#include "dhp/error.hpp"

template <typename Fn>
void expect_error(Fn&& fn, dhp::ErrorKind kind, std::initializer_list<std::string_view> fragments) {
  try {
    fn();
    ADD_FAILURE() << "no dhp::Error thrown";
  } catch (const dhp::Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    const std::string message = e.what();
    for (std::string_view f : fragments)
      EXPECT_NE(message.find(f), std::string::npos) << "'" << f << "' not in: " << message;
  }
}
