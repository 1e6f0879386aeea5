/*
** runtime/rt_pool.c: a fixed pool of nthreads-1 workers plus the caller.
**
** rt_pool_run publishes a job (fn, arg, nitems) under a new generation
** number and wakes the workers; everyone, the caller as thread 0 included,
** takes items from one atomic counter until none are left. The caller then
** waits until every worker has left the job. No allocation after creation.
*/
#define _POSIX_C_SOURCE 200809L
#include "rt_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct worker { rt_pool *pool; int tid; pthread_t th; } worker;

struct rt_pool {
  int nthreads, started;
  worker *w;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  unsigned long gen;          /* bumped for every job */
  int quit;
  int busy;                   /* workers still inside the current job */
  rt_pool_fn fn;
  void *arg;
  long nitems;
  atomic_long next;
};

static void drain(rt_pool *p, int tid) {
  for (;;) {
    long i = atomic_fetch_add(&p->next, 1);
    if (i >= p->nitems) break;
    p->fn(p->arg, tid, i);
  }
}

static void *worker_main(void *a) {
  worker *w = a;
  rt_pool *p = w->pool;
  unsigned long seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->quit && p->gen == seen) pthread_cond_wait(&p->wake, &p->mu);
    if (p->quit) break;
    seen = p->gen;
    pthread_mutex_unlock(&p->mu);
    drain(p, w->tid);
    pthread_mutex_lock(&p->mu);
    if (--p->busy == 0) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

rt_pool *rt_pool_new(int nthreads) {
  if (nthreads <= 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    nthreads = n > 0 ? (int)(n > 1024 ? 1024 : n) : 1;
  }
  rt_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->nthreads = nthreads;
  atomic_init(&p->next, 0);
  p->w = calloc((size_t)nthreads, sizeof *p->w);
  if (!p->w) { free(p); return NULL; }
  if (pthread_mutex_init(&p->mu, NULL)) { free(p->w); free(p); return NULL; }
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  for (int t = 1; t < nthreads; t++) {
    p->w[t].pool = p;
    p->w[t].tid = t;
    if (pthread_create(&p->w[t].th, NULL, worker_main, &p->w[t])) {
      p->nthreads = t;        /* run with the workers we have */
      break;
    }
    p->started = t;
  }
  return p;
}

int rt_pool_size(const rt_pool *p) { return p->nthreads; }

void rt_pool_run(rt_pool *p, long nitems, rt_pool_fn fn, void *arg) {
  if (nitems <= 0) return;
  if (p->nthreads == 1 || nitems == 1) {
    for (long i = 0; i < nitems; i++) fn(arg, 0, i);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->arg = arg;
  p->nitems = nitems;
  atomic_store(&p->next, 0);
  p->busy = p->nthreads - 1;
  p->gen++;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  drain(p, 0);
  pthread_mutex_lock(&p->mu);
  while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

void rt_pool_free(rt_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->quit = 1;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int t = 1; t <= p->started; t++) pthread_join(p->w[t].th, NULL);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->done);
  pthread_mutex_destroy(&p->mu);
  free(p->w);
  free(p);
}
