// Test helpers that run the real logkvd binary as a child process on a port
// chosen by the kernel (--listen=127.0.0.1:0), and talk to it over a raw
// socket with the protocol library. Every process started is stopped by the
// destructor (SIGTERM, then SIGKILL after a bounded wait).
#ifndef LOGKV_TESTS_SERVER_LOGKVD_PROCESS_H_
#define LOGKV_TESTS_SERVER_LOGKVD_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "protocol/frame.h"

namespace logkv::test {

class LogkvdProcess {
 public:
  // binary: path of logkvd; args: extra flags (--data_dir is required).
  // Unless args set --signup-rate-limit, it is 0 (off): the suites sign up
  // dozens of accounts from one address, and the limit has its own test.
  LogkvdProcess(std::string binary, std::vector<std::string> args);
  LogkvdProcess(const LogkvdProcess&) = delete;
  LogkvdProcess& operator=(const LogkvdProcess&) = delete;
  ~LogkvdProcess();

  // Starts the process and waits (bounded) for its "listening on" line.
  absl::Status Start(absl::Duration timeout = absl::Seconds(20));
  // Starts the process and returns at once (port() and http_port() stay 0:
  // give --listen and --http a port).
  absl::Status Launch();
  // SIGTERM and wait; returns the exit status (as from waitpid) or -1.
  int Stop(absl::Duration timeout = absl::Seconds(20));
  // SIGKILL and reap.
  void Kill();
  // Waits for the process to exit by itself (e.g. a start-up error).
  int WaitExit(absl::Duration timeout);

  int port() const { return port_; }
  // The first HTTP address's port (0 when started with --http=).
  int http_port() const { return http_port_; }
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // Everything the process wrote to stderr so far (read as it comes).
  std::string Output();

 private:
  void DrainOutput(absl::Duration wait);

  std::string binary_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
  int stderr_fd_ = -1;
  int port_ = 0;
  int http_port_ = 0;
  std::string output_;
};

// A blocking connection that sends raw frames and reads responses.
class RawConnection {
 public:
  static absl::StatusOr<RawConnection> Connect(int port, absl::Duration timeout = absl::Seconds(5));
  RawConnection(RawConnection&& other) noexcept;
  RawConnection& operator=(RawConnection&& other) noexcept;
  RawConnection(const RawConnection&) = delete;
  ~RawConnection();

  absl::Status SendBytes(absl::string_view bytes);
  // The next response frame, copied; DeadlineExceeded after timeout,
  // Unavailable when the server closed the connection.
  absl::StatusOr<std::string> ReadFrame(absl::Duration timeout = absl::Seconds(10));
  // True if the server closed the connection within timeout.
  bool WaitClosed(absl::Duration timeout);
  void Close();

 private:
  explicit RawConnection(int fd) : fd_(fd), decoder_(1u << 30) {}
  int fd_ = -1;
  protocol::FrameDecoder decoder_;
};

// Reads the response out of a frame returned by ReadFrame.
const protocol::Response* AsResponse(const std::string& frame);

// Bytes as a FlatBuffers vector, and a finished Request frame around an
// operation built in b.
flatbuffers::Offset<flatbuffers::Vector<uint8_t>> Bytes(flatbuffers::FlatBufferBuilder& b,
                                                        absl::string_view s);
std::string FinishRequest(flatbuffers::FlatBufferBuilder& b, uint64_t id,
                          protocol::Operation type, flatbuffers::Offset<void> operation);

// Frames of common requests.
std::string PutFrame(uint64_t id, absl::string_view key, absl::string_view value,
                     int64_t ttl_ms = 0);
std::string GetFrame(uint64_t id, absl::string_view key);
std::string DeleteFrame(uint64_t id, absl::string_view key);

// A free port on 127.0.0.1 right now (bind to 0, read it, close).
int PickFreePort();

}  // namespace logkv::test

#endif  // LOGKV_TESTS_SERVER_LOGKVD_PROCESS_H_
