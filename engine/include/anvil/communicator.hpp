// Collectives for data-parallel training: each rank (an engine) averages its
// gradients with the others' after backward, so every rank applies the same
// optimizer step. Two implementations:
//   - NCCL, one communicator per GPU of this process (ncclCommInitAll), or one
//     per process from a shared unique id (sent by MPI under mpirun);
//   - in-process, K ranks on K threads of one process on the CPU backend, so
//     the data-parallel logic is tested without GPUs;
//   - MPI for the CPU backend, one rank per process under mpirun.
//
//   auto comms = anvil::in_process_communicators(2);   // or nccl_communicators({0, 1})
//   Options o; o.communicator = comms[rank].get();     // one engine per rank, each on its own thread
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "anvil/error.hpp"

namespace anvil {

// What a rank throws when it stops because another rank failed (run_data_parallel reports the
// other rank's failure instead).
class PeerFailure : public Error {
 public:
  using Error::Error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string describe() const = 0;  // "nccl 2.28.9, 2 ranks" / "in-process, 4 ranks"

  // Every rank calls this with its own buffer of `count` floats; each gets the mean over the ranks.
  // A CUDA engine passes device memory and its stream (a cudaStream_t): the work is enqueued there,
  // and may be captured in a CUDA graph. On the CPU (stream null) it is done when this returns.
  virtual void average(float* data, int64_t count, void* stream) = 0;

  // After a failure on one rank: the others, blocked in average(), fail too (PeerFailure or Error)
  // instead of waiting for ever.
  virtual void abort() = 0;

  // This rank takes part in no more collectives (run_data_parallel calls it when a rank's work
  // returns). In-process, a peer that waits for it in average() then fails with an Error instead of
  // waiting for ever; NCCL and MPI cannot tell, so there every rank must run the same collectives.
  virtual void leave() {}

 protected:
  // What every average() checks first: a count >= 0, and a buffer where it is positive.
  static void check_average_args(const float* data, int64_t count) {
    if (count < 0) throw InputError("Communicator::average: a negative count, " + std::to_string(count));
    if (count > 0 && data == nullptr) throw InputError("Communicator::average: a null buffer");
  }
};

// K ranks (1 to kMaxInProcessRanks) in one process, for engines on the CPU backend, each rank on
// its own thread. The mean is summed in rank order, so it is the same bits from run to run. A rank
// whose communicator is destroyed has left (leave()); one that is kept but never averages makes
// the others wait for it, as a rank missing from an MPI or NCCL job does.
constexpr int kMaxInProcessRanks = 65536;
std::vector<std::unique_ptr<Communicator>> in_process_communicators(int ranks);

// Whether this build has NCCL (CMake found nccl.h and libnccl), and its version.
bool nccl_available();
std::string nccl_version();
// One NCCL communicator per CUDA device of this process, ranks in the order given. Throws
// anvil::InputError without NCCL, and anvil::Error naming the NCCL call when one fails.
std::vector<std::unique_ptr<Communicator>> nccl_communicators(const std::vector<int>& devices);
// NCCL across processes: rank 0 makes the unique id (nccl_unique_id) and sends it to the others by
// any means; each then joins with its rank on its current CUDA device (ncclCommInitRank).
std::string nccl_unique_id();
std::unique_ptr<Communicator> nccl_communicator(const std::string& unique_id, int rank, int size);

// One rank per process, started by mpirun (Open MPI, MPICH, or any launcher that sets PMI_SIZE).
// launched_ranks(): the world size the launcher gave this process (1 when none did), read from
// its environment before MPI starts.
bool mpi_available();  // whether this build has MPI (CMake found it)
int launched_ranks();
struct MpiProcess {
  int rank = 0, size = 1;
  int local_rank = 0;  // among the processes on this host: the GPU it takes
};
// Starts MPI once (MPI_Init_thread, funneled) and returns this process's place; InputError
// without MPI. mpi_finalize() ends MPI after a run that succeeded (after a failure the process
// exits without it, and mpirun stops the other ranks).
MpiProcess mpi_process();
void mpi_finalize();
// The CPU backend's communicator: MPI_Allreduce of the gradients widened to double, so the mean
// is the in-process communicator's (exact double sums round the same in any order).
std::unique_ptr<Communicator> mpi_communicator();
// NCCL's unique id as every process sees it: rank 0 makes it (nccl_unique_id), MPI_Bcast sends it
// (no GPU needed). InputError without MPI or NCCL.
std::string mpi_nccl_unique_id();
// CUDA: NCCL from that id (nccl_communicator), on the current device.
std::unique_ptr<Communicator> mpi_nccl_communicator();

}  // namespace anvil
