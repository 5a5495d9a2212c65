#include "server/reactors.h"

#include <utility>

namespace litestage {

void UnaryReactor::set_job(std::shared_ptr<LiteStageServer::Job> job) {
  std::lock_guard<std::mutex> lock(mutex_);
  job_ = std::move(job);
}

void UnaryReactor::OnDone() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (job_ && job_->admitted.load()) server_->RequestDelivered();
  }
  delete this;
}

void UnaryReactor::OnCancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (job_) {
    job_->cancelled.store(true);
    server_->Wake();
  }
}

}  // namespace litestage
