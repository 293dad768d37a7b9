#pragma once
// The names of an option's enumerators, written once: the enum's name for messages and saved
// state, and the parse of a name with the error every caller gives for an unknown one.

#include <c10/util/Exception.h>

#include <array>
#include <cstddef>
#include <string>
#include <utility>

namespace quadnet {
namespace utils {

template <class Enum, std::size_t N>
struct EnumNames {
  const char* option;  // the option's name, e.g. "solver"
  std::array<std::pair<Enum, const char*>, N> entries;

  const char* name(Enum value) const {
    for (const auto& [entry, entry_name] : entries) {
      if (entry == value) return entry_name;
    }
    TORCH_INTERNAL_ASSERT(false, option, ": enumerator without a name");
  }

  // The enumerator named `name`; otherwise c10::ValueError (Python: ValueError)
  // "<op>: <option> must be "a", "b" or "c", got "<name>"".
  Enum parse(const std::string& name, const char* op) const {
    for (const auto& [entry, entry_name] : entries) {
      if (name == entry_name) return entry;
    }
    std::string choices;
    for (std::size_t i = 0; i < N; ++i) {
      choices += (i == 0 ? "" : i + 1 == N ? " or " : ", ") + ("\"" + std::string(entries[i].second) + "\"");
    }
    TORCH_CHECK_VALUE(false, op, ": ", option, " must be ", choices, ", got \"", name, "\"");
  }
};

}  // namespace utils
}  // namespace quadnet
