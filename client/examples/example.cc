// A first program with logkv's client: put, get and delete one key.
//
//   logkv_client_example [host:port]     (default 127.0.0.1:7070)
//
// Exits 0 when every step worked, 1 otherwise, with the error on stderr.

#include <cstdio>
#include <memory>
#include <string>

#include "logkv/client.h"

int main(int argc, char** argv) {
  logkv::ClientOptions options;
  options.nodes = {argc > 1 ? argv[1] : "127.0.0.1:7070"};
  options.client_name = "logkv-example";

  absl::StatusOr<std::unique_ptr<logkv::Client>> client = logkv::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", std::string(client.status().ToString()).c_str());
    return 1;
  }
  std::printf("connected to %s\n", (*client)->connected_node().c_str());

  absl::StatusOr<logkv::WriteResult> put = (*client)->Put("example:greeting", "hello, logkv");
  if (!put.ok()) {
    std::fprintf(stderr, "%s\n", std::string(put.status().ToString()).c_str());
    return 1;
  }
  std::printf("put example:greeting -> version %llu\n",
              static_cast<unsigned long long>(put->version));

  absl::StatusOr<logkv::Value> got = (*client)->Get("example:greeting");
  if (!got.ok()) {
    std::fprintf(stderr, "%s\n", std::string(got.status().ToString()).c_str());
    return 1;
  }
  std::printf("get example:greeting -> \"%s\" (version %llu)\n", got->value.c_str(),
              static_cast<unsigned long long>(got->version));

  absl::StatusOr<logkv::WriteResult> deleted = (*client)->Delete("example:greeting");
  if (!deleted.ok()) {
    std::fprintf(stderr, "%s\n", std::string(deleted.status().ToString()).c_str());
    return 1;
  }
  // After the delete the key must be gone: anything but NotFound is a failure.
  absl::StatusOr<logkv::Value> gone = (*client)->Get("example:greeting");
  if (gone.ok() || !absl::IsNotFound(gone.status())) {
    std::fprintf(stderr, "expected example:greeting to be gone after delete, got %s\n",
                 gone.ok() ? "a value" : std::string(gone.status().ToString()).c_str());
    return 1;
  }
  std::printf("delete example:greeting -> gone\n");
  return 0;
}
