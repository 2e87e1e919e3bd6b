// Data-parallel training in one process: one engine per rank, each on its own
// thread (on CUDA its own GPU, stream and arena), averaging its gradients with
// the others' after backward, so every rank takes the same optimizer step.
//
//   anvil::run_data_parallel(net, options, 2, {}, [&](anvil::Engine& engine, int rank) {
//     anvil::Trainer trainer(engine, data, nullptr, train_options, anvil::DataOptions{});
//     trainer.run(rank == 0 ? callbacks : anvil::Trainer::Callbacks{});
//   });
//
// The network's batch is the global batch; rank r's engine runs batch / ranks and
// takes the r-th slice of each global batch (of a dataset or of the seeded
// generator's), so K ranks train as one engine at the global batch would, up to
// the order of the gradient sums. docs/distributed.md has the rules.
#pragma once

#include <functional>
#include <vector>

#include "anvil/engine.hpp"
#include "anvil/network.hpp"

namespace anvil {

using RankWork = std::function<void(Engine& engine, int rank)>;

// `ranks` ranks: on CUDA (options.device) through NCCL on `gpus` (empty: devices 0 .. ranks-1),
// on the CPU through the in-process communicator (gpus must be empty). InputError before any work
// when the batch does not split evenly, a GPU does not exist or is given twice, or NCCL is missing.
// An exception on one rank stops the others and is rethrown here (the first rank's, preferring a
// rank's own failure to the PeerFailure it caused elsewhere). Every rank must run the same steps:
// on the CPU a rank whose work returns while another still averages makes that one fail with an
// Error; NCCL cannot tell, and the waiting rank would wait for ever. Likewise every rank must load
// the same parameters or checkpoint (load_parameters, load_checkpoint, restore_good_state, a
// Trainer's resume): one rank alone leaves the ranks' parameters apart, which is not detected.
// Rank 0 runs on the calling thread, which keeps rank 0's CUDA device current afterwards.
void run_data_parallel(const Network& network, const Options& options, int ranks, const std::vector<int>& gpus,
                       const RankWork& work);

// One rank per process under mpirun (launched_ranks() > 1): this process is rank mpi_process().rank
// of the world, with the same slicing of the global batch; on CUDA it takes the GPU of its rank on
// its host (local_rank) and joins NCCL through MPI, on the CPU it averages over MPI. InputError
// before any work when the batch does not split, the host has too few GPUs, or MPI or NCCL is
// missing. A failure ends this process without waiting for the others (mpirun stops them).
void run_mpi_rank(const Network& network, const Options& options, const RankWork& work);

}  // namespace anvil
