#include "anvil/plan.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "anvil/error.hpp"

namespace anvil {

size_t align_up(size_t bytes, size_t alignment) { return (bytes + alignment - 1) / alignment * alignment; }

std::string gib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", double(bytes) / double(size_t(1) << 30));
  return text;
}

const PlannedTensor& MemoryPlan::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return t;
  throw Error("internal error: no planned tensor named '" + name + "'");
}

MemoryPlan plan_memory(std::vector<TensorLifetime> requests, int step_count) {
  MemoryPlan plan;
  for (auto& r : requests) {
    if (r.pinned) r.first = 0, r.last = step_count - 1;
    if (r.first > r.last || r.first < 0 || r.last >= step_count)
      throw Error("internal error: tensor '" + r.name + "' has lifetime [" + std::to_string(r.first) + ", " +
                  std::to_string(r.last) + "] outside the schedule");
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

  std::vector<PlannedTensor> placed;   // in placement order
  std::vector<size_t> placed_at(requests.size());
  for (size_t idx : order) {
    const TensorLifetime& r = requests[idx];
    std::vector<std::pair<size_t, size_t>> busy;  // [offset, end) of tensors alive at the same time
    for (const auto& p : placed)
      if (p.first <= r.last && r.first <= p.last) busy.push_back({p.offset, p.offset + p.bytes});
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
    PlannedTensor t;
    static_cast<TensorLifetime&>(t) = r;
    t.offset = best != SIZE_MAX ? best : cursor;
    plan.dynamic_bytes = std::max(plan.dynamic_bytes, t.offset + t.bytes);
    placed_at[idx] = placed.size();
    placed.push_back(t);
  }
  for (int step = 0; step < step_count; ++step) {
    size_t live = 0;
    for (const auto& r : requests)
      if (r.first <= step && step <= r.last) live += r.bytes;
    plan.live_peak_bytes = std::max(plan.live_peak_bytes, live);
  }
  // Report in request order, which follows the schedule.
  for (size_t i = 0; i < requests.size(); ++i) plan.tensors.push_back(placed[placed_at[i]]);
  return plan;
}

}  // namespace anvil
