#include "tests/server/logkvd_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace logkv::test {

namespace p = ::logkv::protocol;

LogkvdProcess::LogkvdProcess(std::string binary, std::vector<std::string> args)
    : binary_(std::move(binary)), args_(std::move(args)) {
  const bool limit_given = std::any_of(args_.begin(), args_.end(), [](const std::string& arg) {
    return absl::StartsWith(arg, "--signup-rate-limit=") ||
           absl::StartsWith(arg, "--signup_rate_limit=");
  });
  if (!limit_given) args_.push_back("--signup-rate-limit=0");
}

LogkvdProcess::~LogkvdProcess() {
  if (running()) Stop(absl::Seconds(10));
  if (stderr_fd_ >= 0) ::close(stderr_fd_);
}

absl::Status LogkvdProcess::Start(absl::Duration timeout) {
  if (absl::Status launched = Launch(); !launched.ok()) return launched;
  // An explicit empty --http= means no HTTP address: no line to wait for.
  const bool expect_http = std::find(args_.begin(), args_.end(), std::string("--http=")) ==
                           args_.end();
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    DrainOutput(absl::Milliseconds(50));
    // The ready lines: "listening on <host>:<port> (binary protocol..." and
    // then "listening on <host>:<port> (HTTP..." for the first HTTP address.
    auto port_of = [this](absl::string_view kind, int* port) {
      size_t line = 0;
      while ((line = output_.find("listening on ", line)) != std::string::npos) {
        const size_t colon = output_.find(':', line + 13);
        const size_t end = colon == std::string::npos ? colon : output_.find(' ', colon);
        line += 13;
        if (end == std::string::npos) return false;
        if (output_.compare(end + 1, kind.size() + 1, absl::StrCat("(", kind)) != 0) continue;
        return absl::SimpleAtoi(output_.substr(colon + 1, end - colon - 1), port);
      }
      return false;
    };
    if (port_of("binary", &port_) && (!expect_http || port_of("HTTP", &http_port_))) {
      return absl::OkStatus();
    }
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      DrainOutput(absl::ZeroDuration());
      return absl::UnavailableError(absl::StrCat("logkvd exited at start-up:\n", output_));
    }
  }
  Kill();
  return absl::DeadlineExceededError(absl::StrCat("logkvd did not start in time:\n", output_));
}

absl::Status LogkvdProcess::Launch() {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  std::vector<std::string> argv_storage = {binary_};
  bool has_listen = false;
  bool has_http = false;
  for (const std::string& arg : args_) {
    if (arg.rfind("--listen", 0) == 0) has_listen = true;
    if (arg.rfind("--http=", 0) == 0) has_http = true;
    argv_storage.push_back(arg);
  }
  if (!has_listen) argv_storage.push_back("--listen=127.0.0.1:0");
  if (!has_http) argv_storage.push_back("--http=127.0.0.1:0");
  std::vector<char*> argv;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  output_.clear();
  port_ = 0;
  http_port_ = 0;
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ < 0) return absl::InternalError("fork failed");
  if (pid_ == 0) {
    // A test binary killed by ctest's timeout cannot run its destructors:
    // the server dies with it instead of holding its ports and a core.
    // (The signal follows the thread that forked: tests start servers from
    // their main thread.)
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(pipe_fds[1], STDERR_FILENO);
    ::execv(binary_.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  if (stderr_fd_ >= 0) ::close(stderr_fd_);
  stderr_fd_ = pipe_fds[0];
  ::fcntl(stderr_fd_, F_SETFL, O_NONBLOCK);
  return absl::OkStatus();
}

void LogkvdProcess::DrainOutput(absl::Duration wait) {
  if (stderr_fd_ < 0) return;
  pollfd fd{stderr_fd_, POLLIN, 0};
  ::poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(wait)));
  char buffer[4096];
  while (true) {
    ssize_t n = ::read(stderr_fd_, buffer, sizeof(buffer));
    if (n <= 0) break;
    output_.append(buffer, static_cast<size_t>(n));
  }
}

std::string LogkvdProcess::Output() {
  DrainOutput(absl::ZeroDuration());
  return output_;
}

int LogkvdProcess::WaitExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (pid_ > 0 && absl::Now() < deadline) {
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      DrainOutput(absl::ZeroDuration());
      return status;
    }
    DrainOutput(absl::Milliseconds(20));
  }
  return -1;
}

int LogkvdProcess::Stop(absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  int status = WaitExit(timeout);
  if (pid_ > 0) {
    Kill();
    return -1;
  }
  return status;
}

void LogkvdProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  DrainOutput(absl::ZeroDuration());
}

absl::StatusOr<RawConnection> RawConnection::Connect(int port, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return RawConnection(fd);
    }
    const int error = errno;
    ::close(fd);
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("connect to port ", port, ": ",
                                                 std::strerror(error)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

RawConnection::RawConnection(RawConnection&& other) noexcept
    : fd_(other.fd_), decoder_(1u << 30) {
  other.fd_ = -1;
}

RawConnection& RawConnection::operator=(RawConnection&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

RawConnection::~RawConnection() { Close(); }

void RawConnection::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

absl::Status RawConnection::SendBytes(absl::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RawConnection::ReadFrame(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    auto frame = decoder_.Next();
    if (!frame.ok()) return frame.status();
    if (frame->has_value()) return std::string(**frame);
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) return absl::DeadlineExceededError("no response in time");
    pollfd fd{fd_, POLLIN, 0};
    if (::poll(&fd, 1, static_cast<int>(left_ms)) <= 0) continue;
    size_t available;
    char* space = decoder_.WritableSpace(64 << 10, &available);
    ssize_t n = ::recv(fd_, space, available, 0);
    if (n == 0) return absl::UnavailableError("server closed the connection");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    }
    decoder_.Commit(static_cast<size_t>(n));
  }
}

bool RawConnection::WaitClosed(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<std::string> frame = ReadFrame(deadline - absl::Now());
    if (absl::IsUnavailable(frame.status())) return true;
    if (absl::IsDeadlineExceeded(frame.status())) return false;
  }
  return false;
}

const p::Response* AsResponse(const std::string& frame) {
  auto response = p::VerifyResponse(frame, 1u << 30);
  return response.ok() ? *response : nullptr;
}

flatbuffers::Offset<flatbuffers::Vector<uint8_t>> Bytes(flatbuffers::FlatBufferBuilder& b,
                                                        absl::string_view s) {
  return b.CreateVector(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

std::string FinishRequest(flatbuffers::FlatBufferBuilder& b, uint64_t id, p::Operation type,
                          flatbuffers::Offset<void> operation) {
  p::RequestBuilder request(b);
  request.add_request_id(id);
  request.add_operation_type(type);
  request.add_operation(operation);
  b.FinishSizePrefixed(request.Finish());
  return std::string(p::FrameOf(b));
}


std::string PutFrame(uint64_t id, absl::string_view key, absl::string_view value,
                     int64_t ttl_ms) {
  flatbuffers::FlatBufferBuilder b;
  auto k = Bytes(b, key);
  auto v = Bytes(b, value);
  p::PutBuilder put(b);
  put.add_key(k);
  put.add_value(v);
  put.add_ttl_ms(ttl_ms);
  auto offset = put.Finish();
  return FinishRequest(b, id, p::Operation::Put, offset.Union());
}

std::string GetFrame(uint64_t id, absl::string_view key) {
  flatbuffers::FlatBufferBuilder b;
  auto k = Bytes(b, key);
  auto offset = p::CreateGet(b, k);
  return FinishRequest(b, id, p::Operation::Get, offset.Union());
}

std::string DeleteFrame(uint64_t id, absl::string_view key) {
  flatbuffers::FlatBufferBuilder b;
  auto k = Bytes(b, key);
  auto offset = p::CreateDelete(b, k);
  return FinishRequest(b, id, p::Operation::Delete, offset.Union());
}

int PickFreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

}  // namespace logkv::test
