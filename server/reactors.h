// The gRPC reactors of the service's calls: unary, and server-streaming
// with flow control. Each holds the job (for OnCancel) and is deleted in
// OnDone; the scheduler thread calls Finish/Write through the job's
// callbacks and never after it finished the job. Requests and responses
// are raw ByteBuffers (server/wire.h says why). Internal to server/.
#ifndef LITESTAGE_SERVER_REACTORS_H_
#define LITESTAGE_SERVER_REACTORS_H_

#include <deque>
#include <memory>
#include <mutex>

#include "grpcpp/grpcpp.h"
#include "litestage/v1/litestage.pb.h"
#include "server/job.h"
#include "server/server.h"
#include "server/wire.h"

namespace litestage {

class UnaryReactor : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryReactor(LiteStageServer* server) : server_(server) {}
  void set_job(std::shared_ptr<LiteStageServer::Job> job);
  void OnCancel() override;
  void OnDone() override;

 private:
  LiteStageServer* server_;
  std::mutex mutex_;
  std::shared_ptr<LiteStageServer::Job> job_;  // Guarded by mutex_.
};

// Server-streaming with gRPC flow control: one write in flight, the rest
// queued in order; Finish only once every queued event was written.
//
// What a slow reader can make the server buffer is bounded: a token delta
// joins the queued delta of the same stage and branch (no other event
// between them), so the queue holds at most one delta per branch between
// structural events (stage started / finished, result), and its bytes are
// bounded by the text the request may generate.
template <typename Event>
class StreamReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit StreamReactor(LiteStageServer* server) : server_(server) {}
  void set_job(std::shared_ptr<LiteStageServer::Job> job) {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = std::move(job);
  }

  // Scheduler thread.
  void Write(Event event) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken_ || finish_requested_) return;
    if (!Coalesce(&event)) queue_.push_back(std::move(event));
    if (writing_) return;
    writing_ = true;
    StartNextWrite(std::move(lock));
  }
  // Scheduler thread; last call.
  void Complete(const grpc::Status& status) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (finish_requested_) return;
    finish_requested_ = true;
    finish_status_ = status;
    if (writing_) return;  // OnWriteDone finishes.
    lock.unlock();
    this->Finish(status);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!ok) {  // The client is gone: drop the rest, stop the work.
      broken_ = true;
      queue_.clear();
      if (job_) MarkCancelled();
    }
    if (!queue_.empty()) {
      StartNextWrite(std::move(lock));
      return;
    }
    writing_ = false;
    if (finish_requested_) {
      const grpc::Status status = finish_status_;
      lock.unlock();
      this->Finish(status);
    }
  }
  void OnCancel() override;
  void OnDone() override;

 private:
  void MarkCancelled();

  // Merges a token delta into a queued delta of the same stage and branch
  // that no structural event follows. True when merged.
  bool Coalesce(Event* event) {
    if (!event->has_delta()) return false;
    for (auto it = queue_.rbegin(); it != queue_.rend(); ++it) {
      if (!it->has_delta()) return false;
      v1::TokenDelta* queued = it->mutable_delta();
      if (queued->stage_index() == event->delta().stage_index() &&
          queued->branch() == event->delta().branch()) {
        queued->mutable_text()->append(event->delta().text());
        return true;
      }
    }
    return false;
  }

  // Serializes the queue's front into the one buffer in flight and writes it.
  void StartNextWrite(std::unique_lock<std::mutex> lock) {
    SerializeResponse(queue_.front(), &in_flight_);
    queue_.pop_front();
    lock.unlock();
    this->StartWrite(&in_flight_);
  }

  LiteStageServer* server_;
  std::mutex mutex_;
  std::shared_ptr<LiteStageServer::Job> job_;
  std::deque<Event> queue_;     // Not yet written.
  grpc::ByteBuffer in_flight_;  // Being written (while writing_).
  bool writing_ = false;
  bool broken_ = false;
  bool finish_requested_ = false;
  grpc::Status finish_status_;
};

template <typename Event>
void StreamReactor<Event>::OnDone() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (job_ && job_->admitted.load()) server_->RequestDelivered();
  }
  delete this;
}

template <typename Event>
void StreamReactor<Event>::OnCancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (job_) MarkCancelled();
}

template <typename Event>
void StreamReactor<Event>::MarkCancelled() {
  job_->cancelled.store(true);
  server_->Wake();
}

}  // namespace litestage

#endif  // LITESTAGE_SERVER_REACTORS_H_
