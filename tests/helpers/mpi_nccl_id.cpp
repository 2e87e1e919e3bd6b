// Run under mpirun by the test DataParallelMpi.RankZerosNcclIdReachesEveryProcess:
// prints "rank R of S: " and NCCL's unique id as this process received it
// (anvil::mpi_nccl_unique_id), in hex. Needs MPI and NCCL, no GPU.
#include <cstdio>
#include <exception>
#include <string>

#include "anvil/communicator.hpp"

int main() {
  try {
    const anvil::MpiProcess p = anvil::mpi_process();
    const std::string id = anvil::mpi_nccl_unique_id();
    std::string hex;
    for (unsigned char byte : id) {
      char two[3];
      std::snprintf(two, sizeof two, "%02x", byte);
      hex += two;
    }
    std::printf("rank %d of %d: %s\n", p.rank, p.size, hex.c_str());
    std::fflush(stdout);
    anvil::mpi_finalize();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi_nccl_id: %s\n", e.what());
    return 1;
  }
}
