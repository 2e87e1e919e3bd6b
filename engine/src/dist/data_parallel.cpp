// The data-parallel driver: communicators, one thread and engine per rank,
// and one failure reported for all of them.
#include "anvil/data_parallel.hpp"

#include <exception>
#include <system_error>
#include <thread>

#include "anvil/communicator.hpp"
#include "anvil/error.hpp"

#if ANVIL_WITH_CUDA
#include <cuda_runtime.h>

#include "engine/src/cuda/check.hpp"
#endif

namespace anvil {

namespace {

std::vector<std::unique_ptr<Communicator>> communicators(const Options& options, int ranks, std::vector<int>& gpus) {
  if (options.device == Device::Cpu) {
    if (!gpus.empty()) throw InputError("GPUs were given for a data-parallel run on the CPU");
    return in_process_communicators(ranks);
  }
  if (gpus.empty())
    for (int g = 0; g < ranks; ++g) gpus.push_back(g);
  if (int(gpus.size()) != ranks)
    throw InputError(std::to_string(gpus.size()) + " GPUs were given for " + std::to_string(ranks) + " ranks");
  return nccl_communicators(gpus);
}

void use_device([[maybe_unused]] const std::vector<int>& gpus, [[maybe_unused]] int rank) {
#if ANVIL_WITH_CUDA
  if (!gpus.empty()) ANVIL_CUDA_CHECK(cudaSetDevice(gpus[size_t(rank)]));
#endif
}

// The failure to report: a rank's own, before a PeerFailure it caused on another rank.
std::exception_ptr first_cause(const std::vector<std::exception_ptr>& failures) {
  std::exception_ptr peer;
  for (const auto& failure : failures) {
    if (!failure) continue;
    try {
      std::rethrow_exception(failure);
    } catch (const PeerFailure&) {
      if (!peer) peer = failure;
    } catch (...) {
      return failure;
    }
  }
  return peer;
}

// The network each of `ranks` ranks runs: its slice of the global batch.
Network rank_network(const Network& network, int ranks) {
  if (ranks < 1) throw InputError("ranks must be at least 1, got " + std::to_string(ranks));
  const int64_t batch = network.input_shape()[0];
  if (batch % ranks != 0)
    throw InputError("the batch of " + std::to_string(batch) + " does not split evenly across " +
                     std::to_string(ranks) + " ranks");
  return network.with_batch(batch / ranks);
}

}  // namespace

void run_data_parallel(const Network& network, const Options& options, int ranks, const std::vector<int>& gpus,
                       const RankWork& work) {
  if (!work) throw InputError("run_data_parallel: no work given for the ranks");
  const Network local = rank_network(network, ranks);
  std::vector<int> devices = gpus;
  const std::vector<std::unique_ptr<Communicator>> comms = communicators(options, ranks, devices);

  std::vector<std::exception_ptr> failures(static_cast<size_t>(ranks));
  auto run_rank = [&](int rank) {
    try {
      use_device(devices, rank);
      Options mine = options;
      mine.communicator = comms[size_t(rank)].get();
      Engine engine(local, mine);
      work(engine, rank);
      comms[size_t(rank)]->leave();  // a peer still waiting for this rank fails instead of hanging
    } catch (...) {
      failures[size_t(rank)] = std::current_exception();
      for (const auto& comm : comms) comm->abort();  // the others must not wait for this rank
    }
  };
  std::vector<std::thread> threads;
  try {
    for (int rank = 1; rank < ranks; ++rank) threads.emplace_back(run_rank, rank);
  } catch (const std::system_error& e) {  // a thread limit: the ranks started stop, and say why
    for (const auto& comm : comms) comm->abort();
    for (auto& t : threads) t.join();
    throw Error("cannot start the thread of rank " + std::to_string(threads.size() + 1) + " of " +
                std::to_string(ranks) + ": " + e.what());
  }
  run_rank(0);  // on the calling thread, which keeps rank 0's device current afterwards
  for (auto& t : threads) t.join();
  if (const std::exception_ptr failure = first_cause(failures)) std::rethrow_exception(failure);
}

void run_mpi_rank(const Network& network, const Options& options, const RankWork& work) {
  if (!work) throw InputError("run_mpi_rank: no work given for the rank");
  if (options.device == Device::Cuda && !nccl_available()) nccl_communicators({});  // says NCCL is missing
  const MpiProcess p = mpi_process();
  const Network local = rank_network(network, p.size);
  std::unique_ptr<Communicator> comm;
  if (options.device == Device::Cpu) {
    comm = mpi_communicator();
  } else {
    const int devices = cuda_device_count();
    if (p.local_rank >= devices)
      throw InputError("rank " + std::to_string(p.rank) + " is process " + std::to_string(p.local_rank + 1) +
                       " on its host, which has " + std::to_string(devices) + " GPUs (one process per GPU)");
    use_device({p.local_rank}, 0);
    comm = mpi_nccl_communicator();
  }
  Options mine = options;
  mine.communicator = comm.get();
  Engine engine(local, mine);
  work(engine, p.rank);
}

}  // namespace anvil
