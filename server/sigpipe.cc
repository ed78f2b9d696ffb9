#include "server/sigpipe.h"

#include <signal.h>

namespace logkv::server {

void IgnoreSigpipeUnlessHandled() {
  struct sigaction before {};
  // sa_handler shares its storage with sa_sigaction: SIG_DFL here is the
  // default action whatever sa_flags say (SA_SIGINFO included).
  if (::sigaction(SIGPIPE, nullptr, &before) != 0 || before.sa_handler != SIG_DFL) return;
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ::sigaction(SIGPIPE, &ignore, nullptr);
}

}  // namespace logkv::server
