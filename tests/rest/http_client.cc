#include "tests/rest/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace logkv::test {

std::optional<std::string> HttpAnswer::Header(absl::string_view name) const {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const auto& [header, value] : headers) {
    if (header == lower) return value;
  }
  return std::nullopt;
}

nlohmann::json HttpAnswer::Json() const {
  return nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
}

std::string BuildRequest(absl::string_view method, absl::string_view target,
                         const HttpHeaders& headers, absl::string_view body) {
  // Host: 127.0.0.1 unless the headers name one.
  const bool host_given = std::any_of(headers.begin(), headers.end(), [](const auto& header) {
    return absl::EqualsIgnoreCase(header.first, "host");
  });
  std::string request = absl::StrCat(method, " ", target, " HTTP/1.1\r\n",
                                     host_given ? "" : "Host: 127.0.0.1\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&request, name, ": ", value, "\r\n");
  if (!body.empty() || method == "PUT" || method == "POST") {
    absl::StrAppend(&request, "Content-Length: ", body.size(), "\r\n");
  }
  absl::StrAppend(&request, "\r\n", body);
  return request;
}

absl::StatusOr<HttpConnection> HttpConnection::Connect(int port, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return HttpConnection(fd);
    }
    const int error = errno;
    ::close(fd);
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(
          absl::StrCat("connect to port ", port, ": ", std::strerror(error)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

HttpConnection::HttpConnection(HttpConnection&& other) noexcept
    : fd_(other.fd_), input_(std::move(other.input_)) {
  other.fd_ = -1;
}

HttpConnection& HttpConnection::operator=(HttpConnection&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = other.fd_;
    input_ = std::move(other.input_);
    other.fd_ = -1;
  }
  return *this;
}

HttpConnection::~HttpConnection() { Close(); }

void HttpConnection::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void HttpConnection::Reset() {
  if (fd_ < 0) return;
  linger option{1, 0};
  ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &option, sizeof(option));
  Close();
}

void HttpConnection::ShutdownWrite() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

absl::Status HttpConnection::Send(absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status HttpConnection::Fill(absl::Time deadline) {
  while (true) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) return absl::DeadlineExceededError("no answer in time");
    pollfd fd{fd_, POLLIN, 0};
    const int ready = ::poll(&fd, 1, static_cast<int>(left_ms));
    if (ready < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (ready <= 0) continue;
    char buffer[64 << 10];
    const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
    if (n == 0) return absl::UnavailableError("the server closed the connection");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    }
    input_.append(buffer, static_cast<size_t>(n));
    return absl::OkStatus();
  }
}

absl::StatusOr<HttpAnswer> HttpConnection::Read(bool head, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  size_t header_end;
  while ((header_end = input_.find("\r\n\r\n")) == std::string::npos) {
    if (absl::Status status = Fill(deadline); !status.ok()) return status;
  }
  HttpAnswer answer;
  const std::vector<absl::string_view> lines =
      absl::StrSplit(absl::string_view(input_).substr(0, header_end), "\r\n");
  answer.status_line = std::string(lines[0]);
  const std::vector<absl::string_view> words = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (words.size() < 2 || !absl::StartsWith(words[0], "HTTP/1.") ||
      !absl::SimpleAtoi(words[1], &answer.status)) {
    return absl::DataLossError(absl::StrCat("bad status line '", lines[0], "'"));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) {
      return absl::DataLossError(absl::StrCat("bad header line '", lines[i], "'"));
    }
    answer.headers.emplace_back(
        absl::AsciiStrToLower(lines[i].substr(0, colon)),
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1))));
  }
  input_.erase(0, header_end + 4);
  const bool no_body = head || (answer.status >= 100 && answer.status < 200) ||
                       answer.status == 204 || answer.status == 304;
  if (no_body) return answer;
  if (std::optional<std::string> length_text = answer.Header("content-length")) {
    size_t length = 0;
    if (!absl::SimpleAtoi(*length_text, &length)) {
      return absl::DataLossError(absl::StrCat("bad Content-Length '", *length_text, "'"));
    }
    while (input_.size() < length) {
      if (absl::Status status = Fill(deadline); !status.ok()) return status;
    }
    answer.body = input_.substr(0, length);
    input_.erase(0, length);
    return answer;
  }
  // No length: the body runs to the end of the stream.
  while (true) {
    absl::Status status = Fill(deadline);
    if (absl::IsUnavailable(status)) break;
    if (!status.ok()) return status;
  }
  answer.body = std::move(input_);
  input_.clear();
  return answer;
}

bool HttpConnection::WaitClosed(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::Status status = Fill(deadline);
    if (absl::IsUnavailable(status)) return true;
    if (!status.ok()) return false;
  }
}

absl::StatusOr<HttpAnswer> Fetch(int port, absl::string_view method, absl::string_view target,
                                 const HttpHeaders& headers, absl::string_view body) {
  absl::StatusOr<HttpConnection> connection = HttpConnection::Connect(port);
  if (!connection.ok()) return connection.status();
  if (absl::Status status = connection->Send(BuildRequest(method, target, headers, body));
      !status.ok()) {
    return status;
  }
  return connection->Read(method == "HEAD");
}

std::string Base64Encode(absl::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t group = (static_cast<uint8_t>(bytes[i]) << 16) |
                           (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                           static_cast<uint8_t>(bytes[i + 2]);
    out.push_back(kAlphabet[(group >> 18) & 63]);
    out.push_back(kAlphabet[(group >> 12) & 63]);
    out.push_back(kAlphabet[(group >> 6) & 63]);
    out.push_back(kAlphabet[group & 63]);
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t group = static_cast<uint8_t>(bytes[i]) << 16;
    if (rest == 2) group |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    out.push_back(kAlphabet[(group >> 18) & 63]);
    out.push_back(kAlphabet[(group >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(group >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

}  // namespace logkv::test
