#pragma once
// Helpers shared by the C++ tests.

#include <c10/util/Exception.h>

#include <functional>
#include <string>

namespace quadnet {
namespace testing {

// The message (without backtrace) of the c10::Error that fn throws, or "no error".
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "no error";
}

}  // namespace testing
}  // namespace quadnet
