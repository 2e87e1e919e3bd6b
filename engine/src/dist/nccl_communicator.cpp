// The NCCL communicator: average() is one ncclAllReduce with ncclAvg, in place,
// on the engine's stream (capturable in a CUDA graph since NCCL 2.9). NVLink
// multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 is set before any NCCL call.
#include <cstdlib>

#include "anvil/communicator.hpp"
#include "anvil/error.hpp"

#if ANVIL_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <set>

#include "engine/src/cuda/check.hpp"
#endif

namespace anvil {

#if ANVIL_WITH_NCCL

namespace {

void check_nccl(ncclResult_t result, const char* call) {
  if (result != ncclSuccess) throw Error(std::string("NCCL: ") + call + ": " + ncclGetErrorString(result));
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override { return "nccl " + nccl_version() + ", " + std::to_string(size_) + " ranks"; }

  void average(float* data, int64_t count, void* stream) override {
    check_average_args(data, count);
    check_nccl(ncclAllReduce(data, data, size_t(count), ncclFloat, ncclAvg, comm_, static_cast<cudaStream_t>(stream)),
               "ncclAllReduce");
  }

  void abort() override {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

 private:
  ncclComm_t comm_;
  int rank_, size_;
};

}  // namespace

bool nccl_available() { return true; }

std::string nccl_version() {
  int v = 0;
  check_nccl(ncclGetVersion(&v), "ncclGetVersion");
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

std::vector<std::unique_ptr<Communicator>> nccl_communicators(const std::vector<int>& devices) {
  int count = 0;
  ANVIL_CUDA_CHECK(cudaGetDeviceCount(&count));
  std::set<int> seen;
  for (const int d : devices) {
    if (d < 0 || d >= count)
      throw InputError("GPU " + std::to_string(d) + " does not exist (this machine has " + std::to_string(count) + ")");
    if (!seen.insert(d).second) throw InputError("GPU " + std::to_string(d) + " is given twice");
  }
  if (devices.empty()) throw InputError("no GPU given");
  ::setenv("NCCL_NVLS_ENABLE", "0", 1);  // NVLink multicast stays off (docs/distributed.md)
  std::vector<ncclComm_t> comms(devices.size());
  check_nccl(ncclCommInitAll(comms.data(), int(devices.size()), devices.data()), "ncclCommInitAll");
  std::vector<std::unique_ptr<Communicator>> out;
  for (size_t r = 0; r < comms.size(); ++r)
    out.push_back(std::make_unique<NcclCommunicator>(comms[r], int(r), int(comms.size())));
  return out;
}

std::string nccl_unique_id() {
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  return std::string(id.internal, sizeof id.internal);
}

std::unique_ptr<Communicator> nccl_communicator(const std::string& unique_id, int rank, int size) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof id.internal)
    throw Error("NCCL: a unique id must be " + std::to_string(sizeof id.internal) + " bytes");
  std::copy(unique_id.begin(), unique_id.end(), id.internal);
  ::setenv("NCCL_NVLS_ENABLE", "0", 1);  // NVLink multicast stays off (docs/distributed.md)
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, size, id, rank), "ncclCommInitRank");
  return std::make_unique<NcclCommunicator>(comm, rank, size);
}

#else  // built without NCCL

bool nccl_available() { return false; }
std::string nccl_version() { return "none"; }

namespace {
[[noreturn]] void no_nccl() {
  throw InputError(
      "this anvil was built without NCCL (CMake found no nccl.h and libnccl), so it cannot use several GPUs");
}
}  // namespace

std::vector<std::unique_ptr<Communicator>> nccl_communicators(const std::vector<int>&) { no_nccl(); }
std::string nccl_unique_id() { no_nccl(); }
std::unique_ptr<Communicator> nccl_communicator(const std::string&, int, int) { no_nccl(); }

#endif

}  // namespace anvil
