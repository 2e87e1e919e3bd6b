// The in-process communicator: K ranks on K threads share one group. average()
// is two barriers: after the first every rank's buffer is known; between them
// rank r sums its slice of the elements over all buffers, in rank order, and
// writes the mean back into each; after the second every slice is done.
#include <condition_variable>
#include <mutex>

#include "anvil/communicator.hpp"
#include "anvil/error.hpp"

namespace anvil {

namespace {

struct Group {
  explicit Group(int ranks) : size(ranks), buffers(size_t(ranks)), counts(size_t(ranks)), waiting(size_t(ranks)) {}

  // Blocks until every rank has arrived (or one aborted, or one left: then throws). A barrier
  // that completed stands even where a rank aborted before this one woke: that rank had left the
  // collective, and failing here would hide its own failure behind a PeerFailure.
  void arrive_and_wait(std::unique_lock<std::mutex>& lock) {
    const uint64_t generation_now = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      changed.notify_all();
    } else {
      changed.wait(lock, [&] { return generation != generation_now || aborted || left > 0; });
    }
    if (generation != generation_now) return;
    if (aborted) throw PeerFailure("in-process communicator: another rank failed");
    refuse_after_leave();
  }

  [[noreturn]] static void refuse_after_leave() {
    throw Error(
        "in-process communicator: another rank's work returned while this rank averages "
        "(every rank must run the same steps)");
  }

  const int size;
  std::mutex mutex;
  std::condition_variable changed;
  int arrived = 0;
  uint64_t generation = 0;
  bool aborted = false;
  int left = 0;  // ranks whose work returned: no collective can complete any more
  std::vector<float*> buffers;
  std::vector<int64_t> counts;
  std::vector<bool> waiting;  // per rank: arrived at this average()'s first barrier
};

class InProcessCommunicator : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Group> group, int rank) : group_(std::move(group)), rank_(rank) {}
  // A rank gone can never arrive: the others' averages throw rather than wait for it.
  ~InProcessCommunicator() override {
    if (!left_) leave();
  }

  int rank() const override { return rank_; }
  int size() const override { return group_->size; }
  std::string describe() const override { return "in-process, " + std::to_string(group_->size) + " ranks"; }

  void average(float* data, int64_t count, void* /*stream: the CPU backend has none*/) override {
    check_average_args(data, count);
    Group& g = *group_;
    std::unique_lock<std::mutex> lock(g.mutex);
    if (g.aborted) throw PeerFailure("in-process communicator: another rank failed");
    if (g.left > 0) Group::refuse_after_leave();
    if (g.waiting[size_t(rank_)]) {  // two engines on one rank: the round would miss a rank and hang
      g.aborted = true;
      g.changed.notify_all();
      throw Error("in-process communicator: rank " + std::to_string(rank_) +
                  " is averaging on two threads at once (one engine per rank)");
    }
    g.waiting[size_t(rank_)] = true;
    g.buffers[size_t(rank_)] = data;
    g.counts[size_t(rank_)] = count;
    g.arrive_and_wait(lock);
    g.waiting[size_t(rank_)] = false;
    for (const int64_t c : g.counts)
      if (c != count) throw Error("in-process communicator: the ranks passed different counts to average()");
    lock.unlock();
    const int64_t first = count * rank_ / g.size, last = count * (rank_ + 1) / g.size;
    for (int64_t i = first; i < last; ++i) {
      double sum = 0;
      for (const float* buffer : g.buffers) sum += buffer[i];
      const auto mean = static_cast<float>(sum / g.size);
      for (float* buffer : g.buffers) buffer[i] = mean;
    }
    lock.lock();
    g.arrive_and_wait(lock);
  }

  void abort() override {
    std::lock_guard<std::mutex> lock(group_->mutex);
    group_->aborted = true;
    group_->changed.notify_all();
  }

  void leave() override {
    std::lock_guard<std::mutex> lock(group_->mutex);
    left_ = true;
    ++group_->left;
    group_->changed.notify_all();
  }

 private:
  std::shared_ptr<Group> group_;
  int rank_;
  bool left_ = false;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> in_process_communicators(int ranks) {
  if (ranks < 1 || ranks > kMaxInProcessRanks)
    throw InputError("in-process communicator: ranks must be from 1 to " + std::to_string(kMaxInProcessRanks) +
                     ", got " + std::to_string(ranks));
  auto group = std::make_shared<Group>(ranks);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < ranks; ++r) out.push_back(std::make_unique<InProcessCommunicator>(group, r));
  return out;
}

}  // namespace anvil
