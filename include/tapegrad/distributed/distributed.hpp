#pragma once
/// \file
/// tapegrad::distributed: data-parallel training over MPI (target tapegrad::distributed, built
/// when CMake finds MPI). The top floor of the library: it includes the floors below, none of
/// them includes it, and tapegrad/tapegrad.hpp does not include it either.
///
///   environment.hpp       Environment (MPI_Init_thread / MPI_Finalize), run(), rank_seed
///   process_group.hpp     ProcessGroup: allreduce, broadcast, allgather, barrier; Work
///   data_parallel.hpp     DistributedDataParallel: gradients averaged in buckets during backward
///   sampler.hpp           DistributedSampler: each rank's share of a data set
///   sync_batch_norm.hpp   SyncBatchNorm, convert_sync_batchnorm
///   checkpoint.hpp        save_checkpoint (rank 0 writes), load_checkpoint (every rank reads)

#include "tapegrad/distributed/checkpoint.hpp"
#include "tapegrad/distributed/data_parallel.hpp"
#include "tapegrad/distributed/environment.hpp"
#include "tapegrad/distributed/process_group.hpp"
#include "tapegrad/distributed/sampler.hpp"
#include "tapegrad/distributed/sync_batch_norm.hpp"
