#include "server/http/http_fetch.h"

#include <llhttp.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace logkv::server::http {

namespace {

// Closes the descriptor when the fetch ends, whichever way.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

struct ParseState {
  FetchedResponse response;
  size_t max_bytes = 0;
  bool complete = false;
  bool too_large = false;
};

// Waits (bounded by deadline) until fd is ready for events.
absl::Status WaitFor(int fd, short events, absl::Time deadline, absl::string_view what) {
  while (true) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) return absl::DeadlineExceededError(absl::StrCat("no answer: ", what));
    pollfd pfd{fd, events, 0};
    const int ready = ::poll(&pfd, 1, static_cast<int>(left_ms));
    if (ready > 0) return absl::OkStatus();
    if (ready < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
    }
  }
}

}  // namespace

absl::StatusOr<FetchedResponse> HttpGet(const std::string& host, int port,
                                        absl::string_view target, absl::Duration timeout,
                                        size_t max_bytes) {
  FetchRequest request;
  request.target = std::string(target);
  request.headers.emplace_back("Accept", "application/json");
  request.timeout = timeout;
  request.max_bytes = max_bytes;
  return HttpFetch(host, port, request);
}

absl::StatusOr<FetchedResponse> HttpFetch(const std::string& host, int port,
                                          const FetchRequest& fetch) {
  const size_t max_bytes = fetch.max_bytes;
  const absl::Time deadline = absl::Now() + fetch.timeout;
  const std::string where = absl::StrCat(host, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
      rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  ScopedFd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) {
    ::freeaddrinfo(found);
    return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  const int connected = ::connect(fd.get(), found->ai_addr, found->ai_addrlen);
  ::freeaddrinfo(found);
  if (connected != 0 && errno != EINPROGRESS) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", where, ": ",
                                               std::strerror(errno)));
  }
  if (absl::Status ready = WaitFor(fd.get(), POLLOUT, deadline, where); !ready.ok()) return ready;
  int error = 0;
  socklen_t length = sizeof(error);
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &length);
  if (error != 0) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", where, ": ",
                                               std::strerror(error)));
  }
  std::string request = absl::StrCat(fetch.method, " ", fetch.target, " HTTP/1.1\r\nHost: ", where,
                                     "\r\nConnection: close\r\nContent-Length: ",
                                     fetch.body.size(), "\r\n");
  for (const auto& [name, value] : fetch.headers) absl::StrAppend(&request, name, ": ", value, "\r\n");
  absl::StrAppend(&request, "\r\n", fetch.body);
  size_t sent = 0;
  while (sent < request.size()) {
    if (absl::Status ready = WaitFor(fd.get(), POLLOUT, deadline, where); !ready.ok()) return ready;
    const ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat("sending to ", where, ": ", std::strerror(errno)));
    }
    sent += static_cast<size_t>(n);
  }

  ParseState state;
  state.max_bytes = max_bytes;
  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_body = [](llhttp_t* parser, const char* at, size_t length) -> int {
    auto* s = static_cast<ParseState*>(parser->data);
    if (s->response.body.size() + length > s->max_bytes) {
      s->too_large = true;
      return -1;
    }
    s->response.body.append(at, length);
    return 0;
  };
  settings.on_message_complete = [](llhttp_t* parser) -> int {
    auto* s = static_cast<ParseState*>(parser->data);
    s->response.status = parser->status_code;
    s->complete = true;
    return static_cast<int>(HPE_PAUSED);
  };
  llhttp_t parser;
  llhttp_init(&parser, HTTP_RESPONSE, &settings);
  parser.data = &state;
  char buffer[16 << 10];
  while (!state.complete) {
    if (absl::Status ready = WaitFor(fd.get(), POLLIN, deadline, where); !ready.ok()) return ready;
    const ssize_t n = ::recv(fd.get(), buffer, sizeof(buffer), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n < 0) {
      return absl::UnavailableError(absl::StrCat("reading from ", where, ": ", std::strerror(errno)));
    }
    const llhttp_errno_t rc =
        n == 0 ? llhttp_finish(&parser) : llhttp_execute(&parser, buffer, static_cast<size_t>(n));
    if (state.too_large) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the answer of ", where, " passes ", max_bytes, " bytes"));
    }
    if (rc != HPE_OK && rc != HPE_PAUSED) {
      return absl::UnavailableError(absl::StrCat(where, " did not answer in HTTP (",
                                                 llhttp_errno_name(rc), ")"));
    }
    if (n == 0 && !state.complete) {
      return absl::UnavailableError(absl::StrCat(where, " closed the connection mid-answer"));
    }
  }
  return std::move(state.response);
}

}  // namespace logkv::server::http
