// SIGPIPE and sockets. libuv writes with plain writev(2), and OpenSSL's socket
// BIO with write(2): a write to a socket whose peer has closed raises SIGPIPE,
// whose default action ends the process. Code that writes to sockets makes
// such a write fail with EPIPE instead, wherever it runs: in logkvd, or inside
// another program (a test, a tool) that drives a Node or a transport alone.
#ifndef LOGKV_SERVER_SIGPIPE_H_
#define LOGKV_SERVER_SIGPIPE_H_

namespace logkv::server {

// Sets SIGPIPE to ignored if its action is the default (ending the process).
// A handler the program installed itself, or an ignore already in place, is
// left as it is. May be called from any thread, any number of times; the
// look and the change are two steps, so a handler another thread installs
// between them is replaced: a program with its own handler installs it
// before it starts a Node or a transport. (A handler installed with
// SA_RESETHAND is the program's choice: after its first SIGPIPE the default
// action, ending the process, is back.)
void IgnoreSigpipeUnlessHandled();

}  // namespace logkv::server

#endif  // LOGKV_SERVER_SIGPIPE_H_
