#pragma once
// Helpers shared by the C++ tests.

#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include <functional>
#include <sstream>
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

// `out` saved to a stream and loaded back: the archive a later run would read.
inline torch::serialize::InputArchive reloaded(torch::serialize::OutputArchive& out) {
  std::stringstream stream;
  out.save_to(stream);
  torch::serialize::InputArchive in;
  in.load_from(stream);
  return in;
}

}  // namespace testing
}  // namespace quadnet
