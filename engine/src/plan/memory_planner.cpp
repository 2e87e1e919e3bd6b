#include "anvil/plan.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "anvil/error.hpp"

namespace anvil {

size_t align_up(size_t bytes, size_t alignment) {
  if (alignment == 0) throw InputError("align_up: the alignment must be positive");
  if (bytes > std::numeric_limits<size_t>::max() - (alignment - 1))
    throw InputError("align_up: " + std::to_string(bytes) + " bytes cannot be aligned to " + std::to_string(alignment));
  return (bytes + alignment - 1) / alignment * alignment;
}

std::string gib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", double(bytes) / double(size_t(1) << 30));
  return text;
}

const PlannedTensor& MemoryPlan::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return t;
  throw InputError("MemoryPlan::find: no planned tensor named '" + name + "'");
}

namespace {

// The placed tensors by lifetime, for finding those alive during a step range
// without visiting all of them: a segment tree over the steps (the ranks of
// the lifetimes' ends, in plan_memory), each tensor stored at the
// O(log steps) nodes that tile its lifetime. A query visits the
// nodes that meet its range, so its cost follows the range and the answer, not
// the tensor count (a chain of 300k layers plans in linear-log time). Each
// node also keeps the highest end offset stored in its subtree, so the top of
// the tensors alive over a range takes O(log steps) however many they are.
class LifetimeIndex {
 public:
  explicit LifetimeIndex(int step_count)
      : steps_(std::max(step_count, 1)),
        nodes_(4 * size_t(steps_)),
        own_top_(nodes_.size()),
        subtree_top_(nodes_.size()) {}

  void insert(int first, int last, size_t id, size_t end) { insert(1, 0, steps_ - 1, first, last, id, end); }

  // Every tensor alive at some step of [first, last], each once; stops past
  // `limit` of them (crowded = true).
  std::vector<size_t> alive(int first, int last, size_t limit, bool& crowded) {
    ++query_;
    std::vector<size_t> found;
    collect(1, 0, steps_ - 1, first, last, limit, found);
    crowded = found.size() > limit;
    return found;
  }

  // The highest end offset of the tensors alive at some step of [first, last] (0: none).
  size_t top(int first, int last) const { return top(1, 0, steps_ - 1, first, last); }

 private:
  void insert(size_t node, int lo, int hi, int first, int last, size_t id, size_t end) {
    if (last < lo || hi < first) return;
    subtree_top_[node] = std::max(subtree_top_[node], end);
    if (first <= lo && hi <= last) {
      nodes_[node].push_back(id);
      own_top_[node] = std::max(own_top_[node], end);
      return;
    }
    const int mid = lo + (hi - lo) / 2;
    insert(2 * node, lo, mid, first, last, id, end);
    insert(2 * node + 1, mid + 1, hi, first, last, id, end);
  }

  void collect(size_t node, int lo, int hi, int first, int last, size_t limit, std::vector<size_t>& found) {
    if (last < lo || hi < first || found.size() > limit) return;
    for (size_t id : nodes_[node]) {
      if (id >= seen_.size()) seen_.resize(id + 1, 0);
      if (seen_[id] != query_) seen_[id] = query_, found.push_back(id);
      if (found.size() > limit) return;
    }
    if (lo == hi) return;
    const int mid = lo + (hi - lo) / 2;
    collect(2 * node, lo, mid, first, last, limit, found);
    collect(2 * node + 1, mid + 1, hi, first, last, limit, found);
  }

  // A node inside the range: everything under it is alive there. A node that
  // only meets it: its own tensors are, and its children are asked.
  size_t top(size_t node, int lo, int hi, int first, int last) const {
    if (last < lo || hi < first) return 0;
    if (first <= lo && hi <= last) return subtree_top_[node];
    const int mid = lo + (hi - lo) / 2;
    return std::max({own_top_[node], top(2 * node, lo, mid, first, last), top(2 * node + 1, mid + 1, hi, first, last)});
  }

  int steps_;
  std::vector<std::vector<size_t>> nodes_;
  std::vector<size_t> own_top_, subtree_top_;  // per node: the highest end stored at it, and under it
  std::vector<uint64_t> seen_;                 // the last query that found each tensor
  uint64_t query_ = 0;
};

// Tensors alive together beyond which a tensor goes on top of them instead of
// into the best gap among them: the gap search sorts them all, quadratic in a
// graph that keeps tens of thousands alive (a 20k-wide fan-in planned in 15 s).
constexpr size_t kMaxBestFitNeighbours = 1024;

}  // namespace

MemoryPlan plan_memory(std::vector<TensorLifetime> requests, int step_count) {
  if (step_count < 0) throw InputError("plan_memory: a negative step count, " + std::to_string(step_count));
  // Every offset + size is at most the sum of all sizes: bounding the sum keeps the arithmetic exact.
  constexpr size_t kMostBytes = size_t(1) << 62;
  MemoryPlan plan;
  for (auto& r : requests) {
    if (r.pinned) r.first = 0, r.last = step_count - 1;
    if (r.first > r.last || r.first < 0 || r.last >= step_count)
      throw InputError("plan_memory: tensor '" + r.name + "' has lifetime [" + std::to_string(r.first) + ", " +
                       std::to_string(r.last) + "] outside the schedule of " + std::to_string(step_count) + " steps");
    if (r.bytes > kMostBytes - plan.naive_bytes)
      throw InputError("plan_memory: the tensors take more than 2^62 bytes in all (tensor '" + r.name + "')");
    r.bytes = align_up(std::max<size_t>(r.bytes, 1));
    plan.naive_bytes += r.bytes;
  }
  // Largest first, then earliest: big tensors claim low offsets, small ones fill the gaps.
  std::vector<size_t> order(requests.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (requests[a].bytes != requests[b].bytes) return requests[a].bytes > requests[b].bytes;
    return requests[a].first < requests[b].first;
  });

  // The planner sees only the steps where a lifetime starts or ends, by rank: two lifetimes overlap
  // exactly when their ranks do, so its memory follows the tensors, not step_count (a caller's
  // 1e9 steps would take 160 GB of segment tree for nothing).
  std::vector<int> bounds;
  for (const auto& r : requests) bounds.insert(bounds.end(), {r.first, r.last});
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  const auto rank = [&](int step) {
    return int(std::lower_bound(bounds.begin(), bounds.end(), step) - bounds.begin());
  };
  std::vector<std::pair<int, int>> spans;  // each request's [first, last] as ranks
  for (const auto& r : requests) spans.push_back({rank(r.first), rank(r.last)});

  std::vector<PlannedTensor> placed;  // in placement order
  std::vector<size_t> placed_at(requests.size());
  LifetimeIndex index(int(bounds.size()));
  for (size_t idx : order) {
    const TensorLifetime& r = requests[idx];
    const auto [first, last] = spans[idx];
    bool crowded = false;
    const std::vector<size_t> others = index.alive(first, last, kMaxBestFitNeighbours, crowded);
    PlannedTensor t;
    static_cast<TensorLifetime&>(t) = r;
    if (crowded) {
      t.offset = index.top(first, last);
    } else {
      std::vector<std::pair<size_t, size_t>> busy;  // [offset, end) of tensors alive at the same time
      for (size_t other : others) busy.push_back({placed[other].offset, placed[other].offset + placed[other].bytes});
      std::sort(busy.begin(), busy.end());
      // Best fit: the smallest gap that holds the tensor; else after the last busy block.
      size_t best = SIZE_MAX, best_gap = SIZE_MAX, cursor = 0;
      for (const auto& [begin, end] : busy) {
        if (begin > cursor && begin - cursor >= r.bytes && begin - cursor < best_gap) {
          best = cursor;
          best_gap = begin - cursor;
        }
        cursor = std::max(cursor, end);
      }
      t.offset = best != SIZE_MAX ? best : cursor;
    }
    plan.dynamic_bytes = std::max(plan.dynamic_bytes, t.offset + t.bytes);
    placed_at[idx] = placed.size();
    index.insert(first, last, placed.size(), t.offset + t.bytes);
    placed.push_back(t);
  }
  // The most bytes live at one step: each tensor adds at its first step and leaves after its last.
  // The peak is at some tensor's first step, so the ranks see it. (Unsigned wrap-around: each
  // running sum is exact.)
  std::vector<size_t> change(bounds.size() + 1, 0);
  for (size_t i = 0; i < requests.size(); ++i) {
    change[size_t(spans[i].first)] += requests[i].bytes;
    change[size_t(spans[i].second) + 1] -= requests[i].bytes;
  }
  size_t live = 0;
  for (size_t b = 0; b < bounds.size(); ++b) {
    live += change[b];
    plan.live_peak_bytes = std::max(plan.live_peak_bytes, live);
  }
  // Report in request order, which follows the schedule.
  for (size_t i = 0; i < requests.size(); ++i) plan.tensors.push_back(placed[placed_at[i]]);
  return plan;
}

}  // namespace anvil
