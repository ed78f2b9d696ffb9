// Writes test vectors of the placement function (protocol/placement.h) as
// JSON, for the Python and TypeScript clients: they route each key to its
// owners with their own implementation of the ring, and their test suites
// check it against these answers of the C++ one that the servers use.
//
//   placement_vectors OUTPUT.json
//
// The cases cover a single member, the 3-node test cluster's ids, ids that
// are not ASCII, keys of every length class XXH3 treats differently (0-3,
// 4-8, 9-16, 17-128, 129-240, longer) and binary keys.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <xxhash.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "protocol/placement.h"

namespace {

std::vector<std::string> Keys() {
  std::vector<std::string> keys = {"a", "ab", "abc", "user:1", "greeting", "0123456789abcdef",
                                   "hello/world/α", std::string("\0\x01\xff", 3)};
  for (size_t length : {17, 64, 128, 129, 200, 240, 241, 1000, 4096}) {
    std::string key;
    for (size_t i = 0; i < length; ++i) key.push_back(static_cast<char>('a' + (i * 7) % 26));
    keys.push_back(key);
  }
  for (int i = 0; i < 200; ++i) keys.push_back(absl::StrCat("key-", i));
  return keys;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: placement_vectors OUTPUT.json\n";
    return 2;
  }
  const std::vector<std::vector<std::string>> member_sets = {
      {"n0"},
      {"n0", "n1", "n2"},
      {"node-c", "node-a", "node-b", "node-d", "node-e"},
      {"ノード1", "ノード2"},
  };
  const std::vector<std::string> keys = Keys();
  nlohmann::json cases = nlohmann::json::array();
  for (const std::vector<std::string>& members : member_sets) {
    const logkv::placement::Ring ring(members);
    nlohmann::json items = nlohmann::json::array();
    for (const std::string& key : keys) {
      // Hashes as decimal strings: JSON numbers lose 64-bit precision.
      items.push_back({{"key_hex", absl::BytesToHexString(key)},
                       {"hash", absl::StrCat(XXH3_64bits(key.data(), key.size()))},
                       {"owners", ring.PreferenceList(key, members.size())}});
    }
    cases.push_back({{"members", members}, {"items", items}});
  }
  std::ofstream out(argv[1], std::ios::trunc);
  out << nlohmann::json{{"virtual_nodes", logkv::placement::kVirtualNodesPerMember},
                        {"cases", cases}}
             .dump(1)
      << "\n";
  out.close();
  if (!out) {
    std::cerr << "placement_vectors: cannot write " << argv[1] << "\n";
    return 1;
  }
  return 0;
}
