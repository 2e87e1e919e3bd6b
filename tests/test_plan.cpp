// Tests of the memory planner (anvil::plan_memory) and of the plans the engine
// builds for real networks.
//
// The planner's contract (anvil/plan.hpp): tensors whose lifetimes overlap
// never share bytes, pinned tensors share bytes with nothing, every offset is
// 256-aligned, and memory is reused otherwise. The checks here are written
// against that contract and the schedule documented in engine.cpp (load, one
// forward step per layer, loss, one backward step per layer in reverse, sgd),
// never against numbers the planner printed.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "anvil/engine.hpp"
#include "anvil/error.hpp"
#include "anvil/network.hpp"
#include "anvil/plan.hpp"
#include "engine/src/spec/network_spec.hpp"
#include "anvil/safetensors.hpp"

namespace {

using anvil::MemoryPlan;
using anvil::PlannedTensor;
using anvil::TensorLifetime;

constexpr size_t kMiB = size_t(1) << 20;

double mib(size_t bytes) { return static_cast<double>(bytes) / kMiB; }

bool live_together(const PlannedTensor& a, const PlannedTensor& b) { return a.first <= b.last && b.first <= a.last; }
bool share_bytes(const PlannedTensor& a, const PlannedTensor& b) {
  return a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
}

// Every property of plan.hpp that does not depend on how the planner chooses offsets.
void check_plan_invariants(const MemoryPlan& plan, int step_count) {
  size_t high_water = 0, naive = 0;
  for (const auto& t : plan.tensors) {
    EXPECT_EQ(t.offset % anvil::kArenaAlignment, 0u) << t.name;
    EXPECT_EQ(t.bytes % anvil::kArenaAlignment, 0u) << t.name;
    EXPECT_GT(t.bytes, 0u) << t.name;
    EXPECT_LE(0, t.first) << t.name;
    EXPECT_LE(t.first, t.last) << t.name;
    EXPECT_LT(t.last, step_count) << t.name;
    if (t.pinned) {
      EXPECT_EQ(t.first, 0) << t.name;
      EXPECT_EQ(t.last, step_count - 1) << t.name;
    }
    high_water = std::max(high_water, t.offset + t.bytes);
    naive += t.bytes;
  }
  EXPECT_EQ(plan.dynamic_bytes, high_water);
  EXPECT_EQ(plan.naive_bytes, naive);
  for (size_t i = 0; i < plan.tensors.size(); ++i)
    for (size_t j = i + 1; j < plan.tensors.size(); ++j) {
      const PlannedTensor &a = plan.tensors[i], &b = plan.tensors[j];
      if (a.pinned || b.pinned || live_together(a, b)) {
        EXPECT_FALSE(share_bytes(a, b)) << a.name << " [" << a.offset << ", +" << a.bytes << ") steps [" << a.first
                                        << ", " << a.last << "] and " << b.name << " [" << b.offset << ", +" << b.bytes
                                        << ") steps [" << b.first << ", " << b.last << "]";
      }
    }
  size_t peak = 0;
  for (int step = 0; step < step_count; ++step) {
    size_t live = 0;
    for (const auto& t : plan.tensors)
      if (t.first <= step && step <= t.last) live += t.bytes;
    peak = std::max(peak, live);
  }
  EXPECT_EQ(plan.live_peak_bytes, peak);
  EXPECT_GE(plan.dynamic_bytes, plan.live_peak_bytes);
}

// ---------------------------------------------------------------- plan_memory

TEST(PlanMemory, AlignUp) {
  EXPECT_EQ(anvil::align_up(0), 0u);
  EXPECT_EQ(anvil::align_up(1), 256u);
  EXPECT_EQ(anvil::align_up(256), 256u);
  EXPECT_EQ(anvil::align_up(257), 512u);
  EXPECT_EQ(anvil::align_up(10, 8), 16u);
  EXPECT_THROW(anvil::align_up(10, 0), anvil::InputError);               // no division by zero
  EXPECT_THROW(anvil::align_up(SIZE_MAX - 10, 256), anvil::InputError);  // no wrap to a small size
  EXPECT_EQ(anvil::align_up(SIZE_MAX - 255, 256), SIZE_MAX - 255);
}

TEST(PlanMemory, EmptyRequestList) {
  const MemoryPlan plan = anvil::plan_memory({}, 3);
  EXPECT_TRUE(plan.tensors.empty());
  EXPECT_EQ(plan.dynamic_bytes, 0u);
  EXPECT_EQ(plan.naive_bytes, 0u);
  EXPECT_EQ(plan.live_peak_bytes, 0u);
}

TEST(PlanMemory, SizesAreRoundedUpAndEmptyTensorsStillGetABlock) {
  const MemoryPlan plan =
      anvil::plan_memory({{"a", 0, 0, 0, false}, {"b", 1, 0, 0, false}, {"c", 300, 0, 0, false}}, 1);
  ASSERT_EQ(plan.tensors.size(), 3u);
  EXPECT_EQ(plan.find("a").bytes, 256u);
  EXPECT_EQ(plan.find("b").bytes, 256u);
  EXPECT_EQ(plan.find("c").bytes, 512u);
  check_plan_invariants(plan, 1);
  // All three live at step 0: nothing can be shared.
  EXPECT_EQ(plan.dynamic_bytes, 1024u);
}

TEST(PlanMemory, ReportsTensorsInRequestOrderWithTheirLifetimes) {
  std::vector<TensorLifetime> req = {
      {"small", 100, 2, 3, false}, {"big", 5000, 0, 1, false}, {"pinned", 10, 1, 1, true}, {"mid", 1000, 1, 4, false}};
  const MemoryPlan plan = anvil::plan_memory(req, 5);
  ASSERT_EQ(plan.tensors.size(), req.size());
  for (size_t i = 0; i < req.size(); ++i) {
    EXPECT_EQ(plan.tensors[i].name, req[i].name);
    EXPECT_EQ(plan.tensors[i].pinned, req[i].pinned);
    if (!req[i].pinned) {
      EXPECT_EQ(plan.tensors[i].first, req[i].first);
      EXPECT_EQ(plan.tensors[i].last, req[i].last);
    }
  }
  // A pinned tensor is live over the whole schedule, whatever its request said.
  EXPECT_EQ(plan.find("pinned").first, 0);
  EXPECT_EQ(plan.find("pinned").last, 4);
  check_plan_invariants(plan, 5);
}

TEST(PlanMemory, FindThrowsForAnUnknownName) {
  const MemoryPlan plan = anvil::plan_memory({{"a", 8, 0, 0, false}}, 1);
  EXPECT_NO_THROW(plan.find("a"));
  EXPECT_THROW(plan.find("b"), anvil::Error);
}

TEST(PlanMemory, LifetimeOutsideTheScheduleIsRefused) {
  EXPECT_THROW(anvil::plan_memory({{"a", 8, 2, 1, false}}, 4), anvil::InputError);   // first > last
  EXPECT_THROW(anvil::plan_memory({{"a", 8, 0, 4, false}}, 4), anvil::InputError);   // last past the end
  EXPECT_THROW(anvil::plan_memory({{"a", 8, -1, 0, false}}, 4), anvil::InputError);  // before the start
  EXPECT_THROW(anvil::plan_memory({}, -5), anvil::InputError);                       // a negative schedule
  EXPECT_NO_THROW(anvil::plan_memory({{"a", 8, 0, 3, false}}, 4));
  try {
    anvil::plan_memory({{"a", 8, 0, 4, false}}, 4);
  } catch (const anvil::InputError& e) {
    EXPECT_EQ(std::string(e.what()), "plan_memory: tensor 'a' has lifetime [0, 4] outside the schedule of 4 steps");
  }
}

// Sizes whose sum (or one, aligned) would wrap around size_t are refused: a wrapped plan put
// two live tensors on the same bytes, or one at 0 bytes.
TEST(PlanMemory, SizesBeyondTheAddressSpaceAreRefused) {
  EXPECT_THROW(anvil::plan_memory({{"a", SIZE_MAX, 0, 1, false}, {"b", 1000, 0, 1, false}}, 2), anvil::InputError);
  const size_t half = size_t(1) << 63;
  EXPECT_THROW(anvil::plan_memory({{"a", half, 0, 1, false}, {"b", half, 0, 1, false}, {"c", 4096, 0, 1, false}}, 2),
               anvil::InputError);
  const size_t large = size_t(1) << 60;  // in range: planned, and apart
  const MemoryPlan plan = anvil::plan_memory({{"a", large, 0, 1, false}, {"b", large, 0, 1, false}}, 2);
  check_plan_invariants(plan, 2);
  EXPECT_EQ(plan.dynamic_bytes, 2 * large);
}

// The checker itself must catch a plan that puts two live tensors on the same bytes.
TEST(PlanMemory, InvariantCheckerCatchesABadPlan) {
  MemoryPlan bad = anvil::plan_memory({{"a", 256, 0, 1, false}, {"b", 256, 1, 1, false}}, 2);
  ASSERT_NE(bad.tensors[0].offset, bad.tensors[1].offset);
  bad.tensors[1].offset = bad.tensors[0].offset;
  ::testing::TestPartResultArray failures;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
    check_plan_invariants(bad, 2);
  }
  bool overlap_reported = false;
  for (int i = 0; i < failures.size(); ++i)
    overlap_reported = overlap_reported ||
                       std::string(failures.GetTestPartResult(i).message()).find("share_bytes") != std::string::npos;
  EXPECT_TRUE(overlap_reported) << failures.size() << " failure(s), none about the overlap";
}

TEST(PlanMemory, RandomLifetimesNeverOverlap) {
  std::mt19937 rng(20240607);
  for (int trial = 0; trial < 300; ++trial) {
    const int steps = 1 + static_cast<int>(rng() % 40);
    const int count = static_cast<int>(rng() % 80);
    std::vector<TensorLifetime> req;
    for (int i = 0; i < count; ++i) {
      TensorLifetime t;
      t.name = "t" + std::to_string(i);
      // Mostly odd sizes, some equal sizes (ties in the sort), some empty, a few large.
      switch (rng() % 4) {
        case 0: t.bytes = rng() % 5000; break;
        case 1: t.bytes = 4096; break;
        case 2: t.bytes = (rng() % 64) * 256; break;
        default: t.bytes = (1 + rng() % 8) * kMiB + rng() % 1000; break;
      }
      t.first = static_cast<int>(rng() % steps);
      t.last = t.first + static_cast<int>(rng() % (steps - t.first));
      t.pinned = rng() % 10 == 0;
      req.push_back(t);
    }
    const MemoryPlan plan = anvil::plan_memory(req, steps);
    ASSERT_EQ(plan.tensors.size(), req.size());
    for (size_t i = 0; i < req.size(); ++i) {
      ASSERT_EQ(plan.tensors[i].name, req[i].name);
      EXPECT_EQ(plan.tensors[i].bytes, anvil::align_up(std::max<size_t>(req[i].bytes, 1)));
    }
    SCOPED_TRACE("trial " + std::to_string(trial));
    check_plan_invariants(plan, steps);
    if (::testing::Test::HasFailure()) return;
  }
}

// More tensors alive together than the best-fit search takes (1024): those
// placements go on top of what is alive, and the contract still holds.
TEST(PlanMemory, CrowdedStepsNeverOverlap) {
  std::mt19937 rng(20261204);
  std::vector<TensorLifetime> req;
  size_t wide_bytes = 0;
  for (int i = 0; i < 1500; ++i) {  // alive over the whole schedule
    req.push_back({"wide" + std::to_string(i), 1 + rng() % 3000, 0, 19, false});
    wide_bytes += anvil::align_up(req.back().bytes);
  }
  for (int i = 0; i < 1500; ++i) {  // short, among them
    const int first = static_cast<int>(rng() % 20);
    req.push_back({"short" + std::to_string(i), 1 + rng() % 5000, first, std::min(19, first + int(rng() % 3)), false});
  }
  std::shuffle(req.begin(), req.end(), rng);
  const MemoryPlan plan = anvil::plan_memory(req, 20);
  check_plan_invariants(plan, 20);
  // Only alive together: the plan is their sum, no more.
  std::vector<TensorLifetime> together;
  for (const auto& r : req)
    if (r.name.rfind("wide", 0) == 0) together.push_back(r);
  const MemoryPlan packed = anvil::plan_memory(together, 20);
  check_plan_invariants(packed, 20);
  EXPECT_EQ(packed.dynamic_bytes, wide_bytes);
}

// The planner works on the steps where lifetimes start and end, so a long schedule costs
// nothing of itself: 2^31 - 1 steps took a segment tree of four nodes a step (over 300 GB:
// std::bad_alloc, not an anvil::Error). Stretched that far, lifetimes plan as they do in a
// short schedule.
TEST(PlanMemory, ALongScheduleTakesNoMemoryOfItsOwn) {
  constexpr int kSteps = std::numeric_limits<int>::max();
  const MemoryPlan empty = anvil::plan_memory({}, kSteps);
  EXPECT_TRUE(empty.tensors.empty());
  EXPECT_EQ(empty.dynamic_bytes, 0u);
  EXPECT_EQ(empty.live_peak_bytes, 0u);

  // a and c never live together (they share bytes); b lives with each; w is pinned.
  const std::vector<TensorLifetime> req = {
      {"w", 1000, 0, 0, true}, {"a", 4 * kMiB, 0, 1, false}, {"b", kMiB, 1, 2, false}, {"c", 4 * kMiB, 2, 3, false}};
  const MemoryPlan plan = anvil::plan_memory(req, 4);
  check_plan_invariants(plan, 4);
  EXPECT_EQ(plan.dynamic_bytes, anvil::align_up(1000) + 5 * kMiB);
  EXPECT_EQ(plan.live_peak_bytes, anvil::align_up(1000) + 5 * kMiB);
  std::vector<TensorLifetime> stretched = req;
  for (auto& t : stretched) t.first *= 500000000, t.last *= 500000000;
  const MemoryPlan long_plan = anvil::plan_memory(stretched, kSteps);
  ASSERT_EQ(long_plan.tensors.size(), req.size());
  for (size_t i = 0; i < req.size(); ++i) EXPECT_EQ(long_plan.tensors[i].offset, plan.tensors[i].offset) << req[i].name;
  EXPECT_EQ(long_plan.find("w").last, kSteps - 1);
  EXPECT_EQ(long_plan.find("c").last, 1500000000);
  EXPECT_EQ(long_plan.dynamic_bytes, plan.dynamic_bytes);
  EXPECT_EQ(long_plan.live_peak_bytes, plan.live_peak_bytes);
}

TEST(PlanMemory, ChainOfShortLifetimesReusesMemory) {
  // 100 tensors of 1 MiB, each live for two steps: at most two are ever live together.
  std::vector<TensorLifetime> req;
  for (int i = 0; i < 100; ++i) req.push_back({"t" + std::to_string(i), kMiB, i, i + 1, false});
  const MemoryPlan plan = anvil::plan_memory(req, 101);
  check_plan_invariants(plan, 101);
  EXPECT_EQ(plan.naive_bytes, 100 * kMiB);
  EXPECT_EQ(plan.live_peak_bytes, 2 * kMiB);
  // Equal sizes over an interval chain: two blocks, used alternately, are enough.
  EXPECT_EQ(plan.dynamic_bytes, 2 * kMiB);
  EXPECT_LE(plan.dynamic_bytes * 10, plan.naive_bytes);
}

TEST(PlanMemory, PinnedTensorsAreNeverReused) {
  // The pinned tensor is requested for one step only; the others come after it.
  std::vector<TensorLifetime> req = {{"pinned", 1000, 0, 0, true}};
  for (int i = 1; i < 10; ++i) req.push_back({"t" + std::to_string(i), 1000, i, i, false});
  const MemoryPlan plan = anvil::plan_memory(req, 10);
  check_plan_invariants(plan, 10);
  const PlannedTensor& pinned = plan.find("pinned");
  for (const auto& t : plan.tensors) {
    if (t.name != "pinned") {
      EXPECT_FALSE(share_bytes(t, pinned)) << t.name;
    }
  }
  // The nine short ones reuse one block; the pinned one has its own.
  EXPECT_EQ(plan.dynamic_bytes, 2 * anvil::align_up(1000));
}

TEST(PlanMemory, TensorsThatNeverLiveTogetherShareMemory) {
  // a and c are live together at step 1 and never with b, so they can take b's bytes.
  // d is small and lives with everything: it must never land on a live block.
  std::vector<TensorLifetime> req = {{"b", 4 * kMiB, 0, 0, false},
                                     {"a", 2 * kMiB, 1, 1, false},
                                     {"c", 2 * kMiB, 1, 2, false},
                                     {"d", 1000, 0, 2, false}};
  const MemoryPlan plan = anvil::plan_memory(req, 3);
  check_plan_invariants(plan, 3);
  // b and {a, c} never live together, so the plan needs 4 MiB + d, not 8 MiB + d.
  EXPECT_EQ(plan.dynamic_bytes, 4 * kMiB + anvil::align_up(1000));
}

// ---------------------------------------------------------------- the engine's plans

anvil::Network load(const std::string& path) { return anvil::Network::load(path); }
const std::string kHeadline = std::string(ANVIL_SOURCE_DIR) + "/examples/kernelbench74.json";

MemoryPlan engine_plan(const anvil::Network& net, anvil::Mode mode, bool input_grad = false) {
  anvil::Options o;
  o.device = anvil::Device::Cpu;
  o.mode = mode;
  o.plan_only = true;
  o.input_grad = input_grad;
  const anvil::Engine engine(net, o);
  return engine.plan();
}

int step_index(const MemoryPlan& plan, const std::string& name) {
  const auto it = std::find(plan.steps.begin(), plan.steps.end(), name);
  if (it == plan.steps.end()) {
    ADD_FAILURE() << "no step '" << name << "'";
    return -1;
  }
  return static_cast<int>(it - plan.steps.begin());
}

const PlannedTensor* find_tensor(const MemoryPlan& plan, const std::string& name) {
  for (const auto& t : plan.tensors)
    if (t.name == name) return &t;
  return nullptr;
}

// The schedule of engine.cpp and the lifetimes it implies, checked against the network's own description.
void check_schedule(const anvil::Network& net, const MemoryPlan& plan, anvil::Mode mode) {
  const auto layers = net.layers();
  const bool train = mode == anvil::Mode::Train;
  // Every layer here is downstream of a parameter, so every one runs a backward step.
  std::vector<std::string> want = {"load"};
  for (const auto& l : layers) want.push_back("forward " + l.name);
  if (train) {
    want.push_back("loss");
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) want.push_back("backward " + it->name);
    want.push_back("optimizer");
  }
  EXPECT_EQ(plan.steps, want);
  check_plan_invariants(plan, static_cast<int>(plan.steps.size()));

  // The slabs: parameters always; gradients and SGD's momentum only when training (and momentum != 0).
  std::set<std::string> expected_names = {"act.input", "params"};
  if (train) expected_names.insert({"grads", "optimizer.step", "loss.valid_elements"});
  if (train && net.spec().optimizer.sgd.momentum != 0) expected_names.insert("optimizer.momentum");
  for (const auto& l : layers) {
    expected_names.insert("act." + l.name);
    if (train) expected_names.insert("grad." + l.name);
  }
  if (train) expected_names.insert({"target", "loss", "flag"});
  std::set<std::string> names;
  for (const auto& t : plan.tensors) {
    EXPECT_TRUE(names.insert(t.name).second) << "duplicate " << t.name;
  }
  EXPECT_EQ(names, expected_names);

  const std::string out = "act." + layers.back().name;
  const auto* input = find_tensor(plan, "act.input");
  const auto* output = find_tensor(plan, out);
  ASSERT_TRUE(input && output);
  EXPECT_TRUE(input->pinned);
  EXPECT_TRUE(output->pinned);
  EXPECT_EQ(input->bytes, anvil::align_up(anvil::numel(net.input_shape()) * sizeof(float)));
  EXPECT_EQ(output->bytes, anvil::align_up(anvil::numel(net.output_shape()) * sizeof(float)));
  if (train) {
    const auto* target = find_tensor(plan, "target");
    const auto* loss = find_tensor(plan, "loss");
    const auto* output_grad = find_tensor(plan, "grad." + layers.back().name);
    ASSERT_TRUE(target && loss && output_grad);
    EXPECT_TRUE(target->pinned);
    EXPECT_TRUE(loss->pinned);
    EXPECT_EQ(target->bytes, output->bytes);
    EXPECT_LE(output_grad->first, step_index(plan, "loss"));
  }

  for (const auto& l : layers) {
    const auto* act = find_tensor(plan, "act." + l.name);
    ASSERT_NE(act, nullptr) << l.name;
    EXPECT_EQ(act->bytes, anvil::align_up(anvil::numel(l.output_shape) * sizeof(float))) << l.name;
    if (!act->pinned) {
      EXPECT_EQ(act->first, step_index(plan, "forward " + l.name)) << l.name;
    }
    for (const auto& in : l.inputs) {
      const auto* src = find_tensor(plan, "act." + in);
      ASSERT_NE(src, nullptr) << in;
      // A layer reads its inputs when it runs forward and, except add, again in its backward.
      EXPECT_GE(src->last, step_index(plan, "forward " + l.name)) << in << " -> " << l.name;
      if (train && l.type != "add") {
        EXPECT_GE(src->last, step_index(plan, "backward " + l.name)) << in << " -> " << l.name;
      }
      if (train && in != "input") {
        // The input's gradient is first written by (at the latest) this layer's backward.
        const auto* grad = find_tensor(plan, "grad." + in);
        ASSERT_NE(grad, nullptr) << in;
        EXPECT_LE(grad->first, step_index(plan, "backward " + l.name)) << in << " <- " << l.name;
      }
    }
    if (train) {
      // A layer's output gradient is read by its own backward.
      const auto* grad = find_tensor(plan, "grad." + l.name);
      ASSERT_NE(grad, nullptr) << l.name;
      EXPECT_GE(grad->last, step_index(plan, "backward " + l.name)) << l.name;
      EXPECT_EQ(grad->bytes, act->bytes) << l.name;
    }
  }
}

TEST(PlanEngine, HeadlineTrainPlan) {
  const anvil::Network net = load(kHeadline);
  const MemoryPlan plan = engine_plan(net, anvil::Mode::Train);
  check_schedule(net, plan, anvil::Mode::Train);
  ASSERT_EQ(plan.steps.size(), 13u);  // load, 5 forward, loss, 5 backward, optimizer

  // Each 256 MiB activation (16*32*32*64*64 floats) is in the plan once, with its gradient.
  EXPECT_EQ(find_tensor(plan, "act.conv_transpose")->bytes, size_t(16) * 32 * 32 * 64 * 64 * 4);
  // Slabs: the parameters, each rounded up to 256 bytes.
  EXPECT_EQ(plan.slab_bytes, anvil::align_up(16 * 32 * 27 * 4) + anvil::align_up(32 * 4) + anvil::align_up(32 * 4));

  EXPECT_LT(plan.arena_bytes(), plan.naive_bytes);
  // The slabs are planned like everything else: parameters, gradients and the momentum (0.9 here).
  for (const char* slab : {"params", "grads", "optimizer.momentum"}) {
    ASSERT_NE(find_tensor(plan, slab), nullptr) << slab;
    EXPECT_EQ(find_tensor(plan, slab)->bytes, plan.slab_bytes) << slab;
    EXPECT_TRUE(find_tensor(plan, slab)->pinned) << slab;
  }
  // The planner should get close to the lower bound on this chain.
  EXPECT_LE(static_cast<double>(plan.dynamic_bytes), 1.1 * static_cast<double>(plan.live_peak_bytes));

  std::cout << "[ plan     ] kernelbench74 train (cpu): arena " << mib(plan.arena_bytes()) << " MiB, planned region "
            << mib(plan.dynamic_bytes) << " MiB, live peak " << mib(plan.live_peak_bytes) << " MiB, naive "
            << mib(plan.naive_bytes) << " MiB, slabs 3 x " << mib(plan.slab_bytes) << " MiB\n";
  RecordProperty("train_arena_mib", std::to_string(mib(plan.arena_bytes())));
  RecordProperty("train_naive_mib", std::to_string(mib(plan.naive_bytes)));
}

TEST(PlanEngine, HeadlineForwardPlanIsSmallerThanTrain) {
  const anvil::Network net = load(kHeadline);
  const MemoryPlan train = engine_plan(net, anvil::Mode::Train);
  const MemoryPlan forward = engine_plan(net, anvil::Mode::Forward);
  check_schedule(net, forward, anvil::Mode::Forward);
  ASSERT_EQ(forward.steps.size(), 6u);  // load, 5 forward
  // No gradients and no optimizer state: activations and the parameter slab only.
  for (const auto& t : forward.tensors) EXPECT_TRUE(t.name.rfind("act.", 0) == 0 || t.name == "params") << t.name;
  EXPECT_LT(forward.arena_bytes(), forward.naive_bytes);
  EXPECT_LT(forward.arena_bytes(), train.arena_bytes());
  EXPECT_LT(forward.dynamic_bytes, train.dynamic_bytes);
  // Forward only: two 256 MiB activations live at once (a layer's input and output) plus input and output.
  const size_t big = size_t(16) * 32 * 32 * 64 * 64 * 4;
  const size_t io = anvil::align_up(16 * 16 * 16 * 32 * 32 * 4) + anvil::align_up(16 * 32 * 16 * 32 * 32 * 4);
  EXPECT_EQ(forward.live_peak_bytes, 2 * big + io + forward.slab_bytes);
  EXPECT_EQ(forward.dynamic_bytes, forward.live_peak_bytes);

  std::cout << "[ plan     ] kernelbench74 forward (cpu): arena " << mib(forward.arena_bytes()) << " MiB, naive "
            << mib(forward.naive_bytes) << " MiB; train arena " << mib(train.arena_bytes()) << " MiB\n";
  RecordProperty("forward_arena_mib", std::to_string(mib(forward.arena_bytes())));
}

TEST(PlanEngine, InputGradientIsPlannedOnlyWhenAsked) {
  const anvil::Network net = load(kHeadline);
  const MemoryPlan without = engine_plan(net, anvil::Mode::Train);
  const MemoryPlan with = engine_plan(net, anvil::Mode::Train, true);
  EXPECT_EQ(find_tensor(without, "grad.input"), nullptr);
  const auto* g = find_tensor(with, "grad.input");
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(g->pinned);  // read back by input_gradient()
  EXPECT_EQ(g->bytes, anvil::align_up(anvil::numel(net.input_shape()) * sizeof(float)));
  check_plan_invariants(with, static_cast<int>(with.steps.size()));
}

TEST(PlanEngine, TestNetworksHaveConsistentPlans) {
  for (const char* name : {"kb74_small", "odd_sizes", "stride1_nopad", "variant_2d", "residual_dag"}) {
    SCOPED_TRACE(name);
    const anvil::Network net = load(std::string(ANVIL_TEST_DATA_DIR) + "/" + name + ".json");
    for (const anvil::Mode mode : {anvil::Mode::Train, anvil::Mode::Forward}) {
      const MemoryPlan plan = engine_plan(net, mode);
      check_schedule(net, plan, mode);
      EXPECT_LE(plan.arena_bytes(), plan.naive_bytes);
    }
  }
}

TEST(PlanEngine, FanOutGradientLivesFromItsFirstWriterToItsProducer) {
  // residual_dag: "act" feeds "branch" and "sum". Backward runs sum before branch, so sum's backward writes
  // grad.act first and branch's accumulates into it; act's own backward reads it last.
  const anvil::Network net = load(std::string(ANVIL_TEST_DATA_DIR) + "/residual_dag.json");
  const MemoryPlan plan = engine_plan(net, anvil::Mode::Train);
  const auto* g = find_tensor(plan, "grad.act");
  ASSERT_NE(g, nullptr);
  EXPECT_LT(step_index(plan, "backward sum"), step_index(plan, "backward branch"));
  EXPECT_LE(g->first, step_index(plan, "backward sum"));
  EXPECT_GE(g->last, step_index(plan, "backward act"));
  // add does not need its inputs in backward, but "act" is still read by branch's and act's (leaky_relu) backward.
  EXPECT_GE(find_tensor(plan, "act.act")->last, step_index(plan, "backward branch"));
}

TEST(PlanEngine, PlanOnlyEngineRefusesToRun) {
  anvil::Options o;
  o.device = anvil::Device::Cpu;
  o.plan_only = true;
  anvil::Engine engine(load(kHeadline), o);
  EXPECT_GT(engine.device_bytes(), 0u);
  EXPECT_THROW(engine.forward(), anvil::Error);
  EXPECT_THROW(engine.train_step(), anvil::Error);
  EXPECT_THROW(engine.parameters(), anvil::Error);
  EXPECT_THROW(engine.set_input(anvil::HostTensor({16, 16, 16, 32, 32})), anvil::Error);
  EXPECT_EQ(engine.steps_done(), 0);
}

// The planned arena really is safe to run in: a CPU engine on the small test networks reproduces
// PyTorch's losses over three SGD steps. An aliasing mistake would overwrite a tensor that is still
// needed (the planned region is poisoned with NaN before use, so reads of unwritten memory show too).
TEST(PlanEngine, PlannedArenaReproducesReferenceLosses) {
  for (const char* name : {"kb74_small", "odd_sizes", "stride1_nopad", "variant_2d", "residual_dag"}) {
    SCOPED_TRACE(name);
    const std::string base = std::string(ANVIL_TEST_DATA_DIR) + "/" + name;
    const anvil::Network net = load(base + ".json");
    const anvil::TensorFile ref = anvil::read_safetensors(base + ".safetensors");
    anvil::Options o;
    o.device = anvil::Device::Cpu;
    anvil::Engine engine(net, o);
    const auto losses = ref.tensors.find("losses");
    ASSERT_NE(losses, ref.tensors.end());
    ASSERT_EQ(losses->second.data.size(), 3u);
    engine.set_input(anvil::require_tensor(ref, base, "input", net.input_shape()));
    engine.set_target(anvil::require_tensor(ref, base, "target", net.output_shape()));
    for (int step = 0; step < 3; ++step) {
      const float loss = engine.train_step();
      const float want = losses->second.data[step];
      EXPECT_NEAR(loss, want, 1e-4 * std::max(1.f, std::fabs(want))) << "step " << step + 1;
    }
  }
}

}  // namespace
