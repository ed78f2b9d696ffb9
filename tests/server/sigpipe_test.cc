// IgnoreSigpipeUnlessHandled (server/sigpipe.h): the default action
// becomes ignored, a handler the program installed stays.
#include "server/sigpipe.h"

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "gtest/gtest.h"

namespace logkv::server {
namespace {

std::atomic<int> handled{0};

void CountingHandler(int) { handled.fetch_add(1); }
void CountingInfoHandler(int, siginfo_t*, void*) { handled.fetch_add(1); }

struct sigaction Current() {
  struct sigaction now {};
  EXPECT_EQ(::sigaction(SIGPIPE, nullptr, &now), 0);
  return now;
}

struct sigaction Plain(void (*handler)(int), int flags = 0) {
  struct sigaction action {};
  action.sa_handler = handler;
  action.sa_flags = flags;
  sigemptyset(&action.sa_mask);
  return action;
}

struct sigaction WithInfo(void (*handler)(int, siginfo_t*, void*)) {
  struct sigaction action {};
  action.sa_sigaction = handler;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  return action;
}

void Install(const struct sigaction& action) {
  ASSERT_EQ(::sigaction(SIGPIPE, &action, nullptr), 0);
}

// Writes to a socket whose peer has closed; returns write's errno.
int WriteToAClosedPeer() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
    ADD_FAILURE() << "socketpair: errno " << errno;
    return 0;
  }
  ::close(fds[1]);
  const char byte = 'x';
  const ssize_t written = ::write(fds[0], &byte, 1);
  const int error = written < 0 ? errno : 0;
  ::close(fds[0]);
  return error;
}

TEST(SigpipeTest, TheDefaultBecomesIgnoredAndAWriteToAClosedPeerFails) {
  ASSERT_NO_FATAL_FAILURE(Install(Plain(SIG_DFL)));
  IgnoreSigpipeUnlessHandled();
  EXPECT_EQ(Current().sa_handler, SIG_IGN);
  EXPECT_EQ(WriteToAClosedPeer(), EPIPE);  // the process lives
  IgnoreSigpipeUnlessHandled();            // again: nothing changes
  EXPECT_EQ(Current().sa_handler, SIG_IGN);
}

// The handler is still installed after the call, and runs once for a write
// to a closed peer, which fails with EPIPE.
void ExpectLeftInPlace(const struct sigaction& handler) {
  ASSERT_NO_FATAL_FAILURE(Install(handler));
  IgnoreSigpipeUnlessHandled();
  EXPECT_EQ(Current().sa_sigaction, handler.sa_sigaction);  // shares sa_handler's storage
  handled = 0;
  EXPECT_EQ(WriteToAClosedPeer(), EPIPE);
  EXPECT_EQ(handled.load(), 1);
  ASSERT_NO_FATAL_FAILURE(Install(Plain(SIG_DFL)));
}

TEST(SigpipeTest, AHandlerTheProgramInstalledIsLeftInPlace) {
  ExpectLeftInPlace(Plain(&CountingHandler));
}

TEST(SigpipeTest, AnInfoHandlerIsLeftInPlace) { ExpectLeftInPlace(WithInfo(&CountingInfoHandler)); }

// The default action with SA_SIGINFO among the flags still ends the process.
TEST(SigpipeTest, TheDefaultWithInfoFlagsBecomesIgnored) {
  ASSERT_NO_FATAL_FAILURE(Install(Plain(SIG_DFL, SA_SIGINFO)));
  IgnoreSigpipeUnlessHandled();
  EXPECT_EQ(Current().sa_handler, SIG_IGN);
  EXPECT_EQ(WriteToAClosedPeer(), EPIPE);
  ASSERT_NO_FATAL_FAILURE(Install(Plain(SIG_DFL)));
}

}  // namespace
}  // namespace logkv::server
