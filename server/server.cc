#include "server/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "server/net/binary_session.h"
#include "server/net/loop.h"

namespace logkv::server {

namespace {

std::string AddressText(const sockaddr_in& address) {
  char host[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &address.sin_addr, host, sizeof(host));
  return absl::StrCat(host, ":", ntohs(address.sin_port));
}

// Sockets with SO_REUSEPORT share a port with any other such socket of the
// same user, so a second logkvd would silently split the traffic. A plain
// bind first proves the port is free of every other program. Two logkvd
// started at once could both pass that proof before either binds: each
// also takes a lock of the port, a Unix socket in the abstract namespace
// named after it (the network namespace's, as the port is), which the
// kernel releases when the process ends. Of the port, whatever the host:
// 0.0.0.0:P and 127.0.0.1:P share it too. Returns the lock's descriptor.
absl::StatusOr<int> LockPort(const sockaddr_in& address) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_un name{};
  name.sun_family = AF_UNIX;
  // At most 23 bytes: the name fits sun_path (108) after its leading NUL.
  const std::string lock = absl::StrCat("logkv-listen-port-", ntohs(address.sin_port));
  std::memcpy(name.sun_path + 1, lock.data(), lock.size());
  const socklen_t length =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + lock.size());
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&name), length) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", AddressText(address), ": ", std::strerror(error),
        error == EADDRINUSE ? " (port in use by another logkvd, or given twice)" : ""));
  }
  return fd;
}

absl::Status CheckPortFree(const sockaddr_in& address) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const int rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address));
  const int error = errno;
  ::close(fd);
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", AddressText(address), ": ",
                                               std::strerror(error),
                                               error == EADDRINUSE ? " (port in use)" : ""));
  }
  return absl::OkStatus();
}

}  // namespace

Server::Server(Service* service, const ServerConfig& config)
    : service_(service),
      config_(config),
      watch_quota_(std::make_unique<net::WatchQuota>(config_.max_watches_per_user)) {}

Server::~Server() {
  RequestShutdown();
  Wait();
}

absl::Status Server::ClaimPort(const sockaddr_in& address) {
  absl::StatusOr<int> lock = LockPort(address);
  if (!lock.ok()) return lock.status();
  port_locks_.push_back(*lock);
  return CheckPortFree(address);
}

absl::Status Server::Start() {
  sockaddr_in address;
  if (int rc = uv_ip4_addr(config_.host.c_str(), config_.port, &address); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot listen on '", config_.host, "': not an IPv4 address"));
  }
  if (config_.port != 0) {
    if (absl::Status status = ClaimPort(address); !status.ok()) return status;
  }
  if (!config_.http_addresses.empty() && config_.router == nullptr) {
    return absl::InvalidArgumentError("HTTP addresses given without a route table");
  }
  std::vector<sockaddr_in> http_addresses;
  for (const HttpAddress& http : config_.http_addresses) {
    sockaddr_in http_address;
    if (int rc = uv_ip4_addr(http.host.c_str(), http.port, &http_address); rc != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot serve HTTP on '", http.host, "': not an IPv4 address"));
    }
    if (http.port != 0) {
      if (absl::Status status = ClaimPort(http_address); !status.ok()) return status;
    }
    http_addresses.push_back(http_address);
  }
  for (int i = 0; i < std::max(1, config_.threads); ++i) {
    auto loop = std::make_unique<net::Loop>(config_, service_, watch_quota_.get(), i);
    if (absl::Status status = loop->Init(address, http_addresses); !status.ok()) return status;
    if (i == 0) {
      // Every other loop joins the ports the kernel picked for the first.
      if (config_.port == 0) address.sin_port = htons(static_cast<uint16_t>(loop->BoundPort()));
      for (size_t j = 0; j < http_addresses.size(); ++j) {
        if (config_.http_addresses[j].port == 0) {
          http_addresses[j].sin_port =
              htons(static_cast<uint16_t>(loop->BoundPort(static_cast<int>(j))));
        }
      }
    }
    loops_.push_back(std::move(loop));
  }
  port_ = ntohs(address.sin_port);
  for (const sockaddr_in& http_address : http_addresses) {
    http_ports_.push_back(ntohs(http_address.sin_port));
  }
  if (config_.accept_at_start) {
    for (auto& loop : loops_) {
      if (absl::Status status = loop->Listen(); !status.ok()) return status;
    }
  }
  for (auto& loop : loops_) {
    threads_.emplace_back([loop = loop.get()] { loop->Run(); });
  }
  return absl::OkStatus();
}

absl::Status Server::StartAccepting() {
  if (config_.accept_at_start) return absl::OkStatus();
  // Shared with the tasks, which may run after this returns.
  struct Outcome {
    absl::Mutex mu;
    absl::Status status ABSL_GUARDED_BY(mu);
  };
  auto outcome = std::make_shared<Outcome>();
  const bool ran = RunOnEveryLoop(
      [outcome](net::Loop& loop) {
        absl::Status status =
            loop.stopping() ? absl::CancelledError("the server is stopping") : loop.Listen();
        absl::MutexLock lock(&outcome->mu);
        outcome->status.Update(status);
      },
      absl::Seconds(30));
  if (!ran) return absl::DeadlineExceededError("the server's loops did not start accepting in 30 s");
  absl::MutexLock lock(&outcome->mu);
  return outcome->status;
}

void Server::RequestShutdown() {
  if (shutdown_requested_.exchange(true)) return;
  for (auto& loop : loops_) loop->Post([](net::Loop& l) { l.BeginShutdown(); });
}

void Server::Wait() {
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  // The loops have closed their listeners: the ports are free for the next.
  for (const int fd : port_locks_) ::close(fd);
  port_locks_.clear();
}

void Server::NotifyEvents() {
  for (auto& loop : loops_) loop->WakeSubscribers();
}

void Server::RecheckSessions() {
  for (auto& loop : loops_) loop->Post([](net::Loop& l) { l.RecheckSessions(); });
}

bool Server::RunOnEveryLoop(std::function<void(net::Loop&)> task, absl::Duration timeout) {
  if (loops_.empty()) return false;
  // Shared with the tasks, which may run (or be dropped by a closing loop)
  // after this returns.
  struct Pending {
    std::atomic<size_t> left;
    absl::Notification answered;
    std::function<void(net::Loop&)> task;
  };
  auto pending = std::make_shared<Pending>();
  pending->left.store(loops_.size());
  pending->task = std::move(task);
  for (auto& loop : loops_) {
    loop->Post([pending](net::Loop& l) {
      pending->task(l);
      if (pending->left.fetch_sub(1) == 1) pending->answered.Notify();
    });
  }
  return pending->answered.WaitForNotificationWithTimeout(timeout);
}

bool Server::LoopsRespond(absl::Duration timeout) {
  return RunOnEveryLoop([](net::Loop&) {}, timeout);
}

}  // namespace logkv::server
