/*
** bench/sgemm_peak.c: OpenBLAS sgemm GFLOP/s, the ceiling for the matrix
** products of the models in bench/compare.sh.
**
**   sgemm_peak THREADS REPS M N K [M N K ...]
**
** For each shape: C[M x N] = A[M x K] * B^T, B stored [N x K] (nn.Linear's
** weight layout, as a layer over a batch of M rows), row-major, single
** precision, openblas_set_num_threads(THREADS); one warm-up call, then the
** best of REPS calls. Prints one line a shape:
**   sgemm M N K threads T: G GFLOP/s (best of REPS, S ms)
** with 2*M*N*K floating-point operations a call.
*/
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 6 || (argc - 3) % 3) {
    fprintf(stderr, "usage: sgemm_peak THREADS REPS M N K [M N K ...]\n");
    return 2;
  }
  int threads = atoi(argv[1]), reps = atoi(argv[2]);
  if (threads < 1 || reps < 1) return fprintf(stderr, "sgemm_peak: bad THREADS or REPS\n"), 2;
  openblas_set_num_threads(threads);
  for (int a = 3; a + 2 < argc; a += 3) {
    long M = atol(argv[a]), N = atol(argv[a + 1]), K = atol(argv[a + 2]);
    if (M < 1 || N < 1 || K < 1) return fprintf(stderr, "sgemm_peak: bad shape\n"), 2;
    float *A = malloc(sizeof(float) * (size_t)(M * K)), *B = malloc(sizeof(float) * (size_t)(N * K));
    float *C = malloc(sizeof(float) * (size_t)(M * N));
    if (!A || !B || !C) return fprintf(stderr, "sgemm_peak: out of memory\n"), 1;
    unsigned s = 1;
    for (long i = 0; i < M * K; i++) A[i] = (float)((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    for (long i = 0; i < N * K; i++) B[i] = (float)((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    for (long i = 0; i < M * N; i++) C[i] = 0;
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {   /* r == 0: warm-up */
      double t0 = now_s();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, A, (int)K, B,
                  (int)K, 0.0f, C, (int)N);
      double t = now_s() - t0;
      if (r > 0 && t < best) best = t;
    }
    printf("sgemm %ld %ld %ld threads %d: %.2f GFLOP/s (best of %d, %.3f ms)\n", M, N, K, threads,
           2.0 * (double)M * (double)N * (double)K / best * 1e-9, reps, 1e3 * best);
    fflush(stdout);
    free(A);
    free(B);
    free(C);
  }
  return 0;
}
