/* Private: a communicator is a table of collectives over an implementation's state. */
#ifndef LOOM_COMM_IMPL_H
#define LOOM_COMM_IMPL_H
#include "loom/comm.h"

typedef struct {
    loom_status (*allreduce_sum_f32)(loom_comm *, float *, int64_t);
    loom_status (*allreduce_sum_f64)(loom_comm *, double *, int64_t);
    loom_status (*broadcast)(loom_comm *, void *, int64_t, int);
    loom_status (*barrier)(loom_comm *);
    void (*free_impl)(loom_comm *);
} loom_comm_ops;

struct loom_comm {
    const char *name;
    int rank, size;
    loom_comm_ops ops;
    void *impl;
};
#endif
