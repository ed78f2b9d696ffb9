// The HTTP/1.1 side of a connection: the parser and the bytes it has not
// taken yet, requests routed to their handlers (ServerConfig::router), the
// answers owed in request order (pipelining, bounded by
// max_pipelined_requests), "100 Continue", and the budget for large bodies
// (read only for a caller whose API key holds, and within max_buffered_bytes).
//
// Thread-safety: loop thread only, but HttpAnswers::Deliver (any thread).
#ifndef LOGKV_SERVER_NET_HTTP_SESSION_H_
#define LOGKV_SERVER_NET_HTTP_SESSION_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "server/http/http_message.h"
#include "server/http/http_parser.h"
#include "server/http/router.h"
#include "server/net/connection.h"
#include "server/net/loop.h"

namespace logkv::server::net {

// One per loop: the http::ResponseSink its HTTP connections' Responders
// answer through (it lives as long as the loop, so it outlives them all). An
// answer given while the handler still runs goes straight to the request; any
// other is handed to the loop's thread.
class HttpAnswers final : public http::ResponseSink {
 public:
  explicit HttpAnswers(Loop* loop) : loop_(loop) {}

  void Deliver(uint64_t connection_id, uint64_t sequence, http::HttpResponse response) override;

  // While a handler runs on the loop: where an answer given at once goes.
  struct InlineAnswer {
    uint64_t connection_id = 0;
    uint64_t sequence = 0;
    bool answered = false;
    http::HttpResponse response;
  };
  void set_inline_answer(InlineAnswer* answer) { inline_answer_ = answer; }

 private:
  Loop* const loop_;
  InlineAnswer* inline_answer_ = nullptr;  // loop thread only
};

class HttpSession final : public ProtocolSession {
 public:
  // answers must outlive the session; remote_address: the client's IP as text.
  HttpSession(Connection& connection, HttpAnswers* answers, std::string remote_address);

  char* ReadSpace(size_t min_bytes, size_t* available) override;
  void Received(size_t bytes) override {
    end_ += bytes;
    if (stream_ != nullptr) {
      // A client of an event stream has nothing more to ask: what it sends
      // is dropped, never buffered.
      begin_ = end_ = 0;
      return;
    }
    ProcessInput();
  }
  void ProcessInput() override;
  size_t buffered_input() const override { return end_ - begin_; }
  bool WantsInput() const override { return !stop_parsing_ && !PipelineFull(); }
  bool HoldsBackInput() const override { return PipelineFull(); }
  // With nothing owed, a request begun and not complete within
  // http_idle_timeout times out (408); a connection that sends nothing for
  // as long is idle.
  Expiry CheckExpiry(int64_t now_ms) const override;
  void Expire() override;
  // An event stream (http::EventStream) is written as the engine's events come.
  bool OnEvents(EventsPass& pass) override;
  // An event stream whose credentials stopped holding ends.
  bool CredentialsHold() override;
  void OnClose() override { stream_.reset(); }

  // The answer for sequence, given after its handler returned.
  void Complete(uint64_t sequence, http::HttpResponse response);

 private:
  struct Owed {
    uint64_t sequence;
    bool ready = false;
    bool keep_alive = true;
    bool head = false;
    const http::Route* route = nullptr;  // null: refused before routing
    int64_t start_ns = 0;
    std::string subject;  // the request's path, for the observer (observe_subjects)
    std::string bytes;    // the serialised answer, once ready
  };

  Loop& loop() { return *connection().loop; }
  const ServerConfig& config() const { return connection().loop->config(); }
  bool PipelineFull() const { return owed_.size() >= config().max_pipelined_requests; }
  // Limits on the body of the request being parsed, before its bytes are
  // buffered: false when it was refused (the connection then closes).
  bool AdmitBody();
  void Dispatch(http::HttpRequest& request);
  // Emits every ready answer in request order.
  void EmitReady();
  // "100 Continue" for the request being read, once nothing is owed before it.
  void SendContinueIfDue();
  // Answers status and closes once the answers owed before it are out;
  // retry_after_s > 0 adds Retry-After.
  void Refuse(int status, absl::string_view message, int retry_after_s = 0);
  // Sends response's head and turns the connection into its event stream.
  void StartStream(http::HttpResponse response);
  void EndStream();

  HttpAnswers* const answers_;
  http::HttpParser parser_;
  const std::string remote_address_;
  // Received bytes [begin_, end_) not yet given to the parser.
  std::unique_ptr<char[]> input_;
  size_t capacity_ = 0, begin_ = 0, end_ = 0;
  bool stop_parsing_ = false;  // after a request that ends the connection, or an error
  int64_t request_began_ms_ = -1;  // loop time the unfinished request began, -1: none
  std::deque<Owed> owed_;  // answers not yet in the output, oldest first
  uint64_t next_sequence_ = 0;
  // Set once the connection answered with an event stream: it reads no more
  // requests and ends when the stream or the client does.
  std::shared_ptr<http::EventStream> stream_;
};

}  // namespace logkv::server::net

#endif  // LOGKV_SERVER_NET_HTTP_SESSION_H_
