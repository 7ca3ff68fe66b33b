#include <cstdio>
#include <cstdlib>

#include "dhp/log.hpp"
#include "dhp/runtime.hpp"

#ifdef DHP_HAVE_MPI
#include <mpi.h>
#endif

namespace dhp {

void abort_job(int code, const std::string& reason) noexcept {
  try {
    DHP_LOG_ERROR("aborting the job (code {}): {}", code, reason);
    logger()->flush();
  } catch (...) {
  }
  std::fprintf(stderr, "dhp: aborting the job (code %d): %s\n", code, reason.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
#ifdef DHP_HAVE_MPI
  int initialised = 0, finalized = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalized);
  if (initialised && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::_Exit(code);
}

}  // namespace dhp
