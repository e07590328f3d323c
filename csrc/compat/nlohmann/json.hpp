// Stand-in for nlohmann/json.hpp, which torch's ATen/functorch/Interpreter.h includes but torch's
// wheels (2.11 to 2.15) do not ship. Interpreter.h uses it only to (de)serialize interpreters,
// which nothing here does: these members are declared, never defined, so any use fails to link.
// setup.py adds this folder with -idirafter, so a real nlohmann/json.hpp, where present, wins.
#pragma once
#include <string>

namespace nlohmann {
struct json {
  json();
  template <class T>
  json(const T&);
  std::string dump() const;
  static json parse(const std::string&);
  template <class T>
  T get() const;
};
}  // namespace nlohmann
