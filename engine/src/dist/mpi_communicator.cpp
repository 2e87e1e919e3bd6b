// One rank per process under mpirun: MPI's start and end, the CPU backend's
// communicator over MPI_Allreduce, and NCCL's unique id sent with MPI_Bcast.
#include <cstdlib>
#include <string>

#include "anvil/communicator.hpp"
#include "anvil/error.hpp"

#if ANVIL_WITH_MPI
#include <mpi.h>

#include <algorithm>
#include <vector>
#endif

namespace anvil {

int launched_ranks() {
  // Open MPI, then the PMI of MPICH and Slurm, then PMIx.
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    const char* value = std::getenv(name);
    if (value == nullptr) continue;
    char* end = nullptr;
    const long size = std::strtol(value, &end, 10);
    if (end != value && *end == '\0' && size >= 1 && size <= 1 << 20) return int(size);
  }
  return 1;
}

#if ANVIL_WITH_MPI

namespace {

void check_mpi(int result, const char* call) {
  if (result == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(result, text, &length);
  throw Error(std::string("MPI: ") + call + ": " + std::string(text, size_t(length)));
}

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(const MpiProcess& p) : rank_(p.rank), size_(p.size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override { return "MPI, " + std::to_string(size_) + " processes"; }

  void average(float* data, int64_t count, void* /*stream: the CPU backend has none*/) override {
    check_average_args(data, count);
    wide_.assign(data, data + count);
    // MPI counts are int: large buffers go in pieces.
    constexpr int64_t kPiece = int64_t(1) << 30;
    for (int64_t first = 0; first < count; first += kPiece)
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, wide_.data() + first, int(std::min(kPiece, count - first)), MPI_DOUBLE,
                              MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce");
    for (int64_t i = 0; i < count; ++i) data[i] = static_cast<float>(wide_[size_t(i)] / size_);
  }

  void abort() override { MPI_Abort(MPI_COMM_WORLD, 1); }

 private:
  int rank_, size_;
  std::vector<double> wide_;
};

// Rank 0's NCCL unique id, in every process.
std::string broadcast_nccl_id(const MpiProcess& p) {
  if (!nccl_available()) nccl_unique_id();  // throws on every rank, saying why, before any waits in MPI_Bcast
  std::string id = p.rank == 0 ? nccl_unique_id() : std::string();
  int bytes = int(id.size());
  check_mpi(MPI_Bcast(&bytes, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
  id.resize(size_t(bytes));
  check_mpi(MPI_Bcast(id.data(), bytes, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
  return id;
}

}  // namespace

bool mpi_available() { return true; }

MpiProcess mpi_process() {
  int started = 0;
  check_mpi(MPI_Initialized(&started), "MPI_Initialized");
  if (!started) {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  }
  MpiProcess p;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &p.rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &p.size), "MPI_Comm_size");
  MPI_Comm host;
  check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, p.rank, MPI_INFO_NULL, &host),
            "MPI_Comm_split_type");
  check_mpi(MPI_Comm_rank(host, &p.local_rank), "MPI_Comm_rank");
  MPI_Comm_free(&host);
  return p;
}

void mpi_finalize() {
  int started = 0, finished = 0;
  MPI_Initialized(&started);
  MPI_Finalized(&finished);
  if (started && !finished) MPI_Finalize();
}

std::unique_ptr<Communicator> mpi_communicator() { return std::make_unique<MpiCommunicator>(mpi_process()); }

std::string mpi_nccl_unique_id() { return broadcast_nccl_id(mpi_process()); }

std::unique_ptr<Communicator> mpi_nccl_communicator() {
  const MpiProcess p = mpi_process();
  return nccl_communicator(broadcast_nccl_id(p), p.rank, p.size);
}

#else  // built without MPI

namespace {
[[noreturn]] void no_mpi() {
  throw InputError("this anvil was built without MPI (CMake found none; install libopenmpi-dev and rebuild)");
}
}  // namespace

bool mpi_available() { return false; }
MpiProcess mpi_process() { no_mpi(); }
void mpi_finalize() {}
std::unique_ptr<Communicator> mpi_communicator() { no_mpi(); }
std::string mpi_nccl_unique_id() { no_mpi(); }
std::unique_ptr<Communicator> mpi_nccl_communicator() { no_mpi(); }

#endif

}  // namespace anvil
