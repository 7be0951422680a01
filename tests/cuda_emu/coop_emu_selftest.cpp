/* Self-test of the cooperative launch, the grid barrier and the cp.async model of the CUDA
 * stand-ins (cuda_runtime.h here); scripts/decode_emu.sh builds and runs it.
 *
 * (a) launch_coop, 5 blocks of 64 threads in a shuffled order: each block's dynamic shared
 *     memory, __syncthreads and warp shuffles are its own, blockIdx / threadIdx / blockDim /
 *     gridDim are right, and a global written by another block before grid_sync is seen after.
 * (b) the order grid_sync enforces: a value block 0 writes after barrier 1 is unseen before it
 *     and seen by every thread after barrier 2; 6 blocks of 512 threads count with atomicAdd.
 * (c) cp.async: nothing lands at issue, wait(2) of three groups lands only the first, wait(0)
 *     the rest, an uncommitted copy never lands, an empty group counts, the source is read at
 *     issue, each thread has its own groups, and copies left at a thread's exit are dropped.
 * (d) in a child process: a block that skips grid_sync, and grid_sync in a sequential launch,
 *     end the program with status 2 and a message.
 * Exit status 1 on a failure. */
#include "cuda_runtime.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <string>

static int fails = 0, checks = 0;
static void expect(bool ok, const char *what) {
    checks++;
    if (!ok) fails++, fprintf(stderr, "FAIL: %s\n", what);
}

/* ---- (a) per-block state under a cooperative launch ---------------------------------------- */

static int seen_smem[5][64], seen_other[5][64], seen_shfl[5][64], seen_dims[5][64];
static int slot[5], marks, seen_marks[5][64];
static std::vector<unsigned> started; /* blockIdx in the order the blocks first ran */

static void k_blocks() {
    unsigned b = blockIdx.x, t = threadIdx.x, nb = gridDim.x;
    int *sm = (int *)emu::dsmem();
    if (t == 0) started.push_back(b);
    sm[t] = (int)b; /* every thread its own word of its block's memory */
    if (t == 0) slot[(b + 1) % nb] = 100 + (int)(b + 1) % (int)nb; /* another block's slot */
    if (t == 0) marks++;
    __syncthreads();
    seen_marks[b][t] = marks; /* the block first run gets past before the others arrive */
    int sum = (int)t;         /* lane sum over the warp: 32 * warp base + 0 + ... + 31 */
    for (int o = 16; o; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    emu::grid_sync();
    int ok = 1;
    for (unsigned i = 0; i < blockDim.x; i++)
        ok &= sm[i] == (int)b;
    seen_smem[b][t] = ok;
    seen_other[b][t] = slot[b];
    seen_shfl[b][t] = sum;
    seen_dims[b][t] = blockDim.x == 64 && gridDim.x == 5;
}

static void test_blocks() {
    std::vector<unsigned> order = {3, 0, 4, 1, 2};
    memset(seen_smem, 0, sizeof seen_smem), memset(slot, 0, sizeof slot), marks = 0;
    started.clear();
    emu::launch_coop(5, 64, 64 * sizeof(int), k_blocks, order);
    expect(started == order, "(a) blockIdx follows the order given");
    expect(seen_marks[order[0]][63] == 1, "(a) __syncthreads waits for the block only");
    bool smem = true, other = true, shfl = true, dims = true;
    for (int b = 0; b < 5; b++)
        for (int t = 0; t < 64; t++) {
            smem &= seen_smem[b][t] == 1;
            other &= seen_other[b][t] == 100 + b;
            shfl &= seen_shfl[b][t] == 32 * (t & ~31) + 31 * 16;
            dims &= seen_dims[b][t] == 1;
        }
    expect(smem, "(a) each block reads its own blockIdx back from its dynamic shared memory");
    expect(other, "(a) a slot another block wrote before grid_sync is seen after it");
    expect(shfl, "(a) warp shuffles of each block stay within its warps");
    expect(dims, "(a) blockDim and gridDim");
}

/* ---- (b) the order of grid_sync ------------------------------------------------------------ */

static int flag, before[6 * 512], after[6 * 512];
static unsigned arrivals, arrived_at_1[6 * 512];

static void k_order() {
    int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    before[i] = flag;
    atomicAdd(&arrivals, 1u);
    emu::grid_sync(); /* 1 */
    arrived_at_1[i] = arrivals;
    if (blockIdx.x == 0 && threadIdx.x == 0) flag = 42;
    __syncthreads();
    emu::grid_sync(); /* 2 */
    after[i] = flag;
}

static void test_order() {
    for (unsigned nb : {3u, 6u}) {
        unsigned nt = nb == 3 ? 64 : 512, n = nb * nt;
        flag = 0, arrivals = 0;
        std::vector<unsigned> order(nb);
        for (unsigned q = 0; q < nb; q++)
            order[q] = nb - 1 - q; /* block 0 runs last between barriers */
        emu::launch_coop(nb, nt, 0, k_order, order);
        bool b0 = true, a42 = true, all = true;
        for (unsigned i = 0; i < n; i++)
            b0 &= before[i] == 0, a42 &= after[i] == 42, all &= arrived_at_1[i] == n;
        expect(b0, "(b) a write after grid_sync 1 is unseen before it");
        expect(a42, "(b) a write after grid_sync 1 is seen by every thread after grid_sync 2");
        expect(all, "(b) every thread has arrived at grid_sync 1 before any passes it");
    }
    unsigned u = 5;
    expect(atomicExch(&u, 9u) == 5 && u == 9, "atomicExch");
}

/* ---- (c) cp.async -------------------------------------------------------------------------- */

alignas(16) static unsigned char src[2][64][6][16]; /* [block][thread][copy] */
static int got[2][64][8];

static bool all_are(const unsigned char *p, unsigned char v) {
    for (int i = 0; i < 16; i++)
        if (p[i] != v) return false;
    return true;
}
static bool is_copy(const unsigned char *d, const unsigned char *s) { return !memcmp(d, s, 16); }

static void k_cp() {
    unsigned b = blockIdx.x, t = threadIdx.x;
    unsigned char(*d)[16] = (unsigned char(*)[16])emu::dsmem() + 6 * t, (*s)[16] = src[b][t];
    int *r = got[b][t];
    emu::cp_async16(d[0], s[0]), emu::cp_async_commit(); /* group 1 */
    emu::cp_async16(d[1], s[1]), emu::cp_async_commit(); /* group 2 */
    emu::cp_async16(d[2], s[2]), emu::cp_async_commit(); /* group 3 */
    emu::cp_async16(d[3], s[3]);                         /* never committed */
    r[0] = all_are(d[0], 0xff) && all_are(d[1], 0xff) && all_are(d[2], 0xff);
    __syncthreads(); /* other threads issue theirs: they must not land these */
    emu::cp_async_wait(2);
    r[1] = is_copy(d[0], s[0]) && all_are(d[1], 0xff) && all_are(d[2], 0xff);
    emu::cp_async_wait(0);
    r[2] = is_copy(d[1], s[1]) && is_copy(d[2], s[2]) && all_are(d[3], 0xff);
    emu::grid_sync();
    unsigned char old[16];
    memcpy(old, s[4], 16);
    emu::cp_async_commit(); /* group 4 holds the copy to d[3] */
    emu::cp_async16(d[4], s[4]);
    memset(s[4], 0x5a, 16); /* the source is read at issue */
    emu::cp_async_commit(); /* group 5 */
    emu::cp_async_commit(); /* group 6: empty */
    emu::cp_async_wait(1);
    r[3] = is_copy(d[3], s[3]) && is_copy(d[4], old);
    r[4] = 1;
}

alignas(16) static unsigned char left[16];
static void k_leave() { /* one thread, a copy committed and never waited for */
    alignas(16) static const unsigned char x[16] = {1, 2, 3};
    emu::cp_async16(left, x), emu::cp_async_commit();
}
static void k_wait_only() { emu::cp_async_wait(0); }

static void test_cp() {
    std::mt19937 rng(3);
    for (auto &v : src)
        for (auto &w : v)
            for (auto &x : w)
                for (auto &c : x)
                    c = (unsigned char)(rng() % 255); /* never all 0xff */
    memset(got, 0, sizeof got);
    emu::launch_coop(2, 64, 64 * 6 * 16, k_cp);
    bool ok[5] = {true, true, true, true, true};
    for (auto &v : got)
        for (auto &r : v)
            for (int k = 0; k < 5; k++)
                ok[k] &= r[k] == 1;
    expect(ok[0], "(c) no copy lands when issued or committed");
    expect(ok[1], "(c) wait(2) of three groups lands the first only");
    expect(ok[2], "(c) wait(0) lands the rest but not an uncommitted copy");
    expect(ok[3], "(c) a later commit takes the open copy; an empty group counts; source at issue");
    expect(ok[4], "(c) every thread ran to the end");
    memset(left, 0xee, 16);
    emu::launch(1, 1, 0, k_leave);
    emu::launch(1, 1, 0, k_wait_only);
    expect(all_are(left, 0xee), "(c) copies left at a thread's exit are dropped, not landed later");
}

/* ---- (d) misuse ends the program ----------------------------------------------------------- */

static void k_skip() {
    if (blockIdx.x != 2) emu::grid_sync();
}
static void k_seq_grid() { emu::grid_sync(); }

/* Run f in a child process: its exit status and what it wrote to stderr. */
static int in_child(void (*f)(), std::string &err) {
    int fd[2];
    if (pipe(fd)) return -1;
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2), close(fd[0]), close(fd[1]);
        f();
        _exit(0);
    }
    close(fd[1]);
    char buf[256];
    ssize_t k;
    while ((k = read(fd[0], buf, sizeof buf)) > 0)
        err.append(buf, (size_t)k);
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_misuse() {
    std::string e1, e2;
    int s1 = in_child([] { emu::launch_coop(4, 32, 0, k_skip); }, e1);
    expect(s1 == 2 && e1.find("grid barrier that others never reach") != std::string::npos,
           "(d) a block that skips grid_sync is reported");
    int s2 = in_child([] { emu::launch(2, 32, 0, k_seq_grid); }, e2);
    expect(s2 == 2 && e2.find("grid_sync outside") != std::string::npos,
           "(d) grid_sync in a sequential launch is reported");
}

int main() {
    test_blocks();
    test_order();
    test_cp();
    test_misuse();
    printf("emulator's cooperative launch, grid_sync and cp.async, %d checks: %s (%d failed)\n",
           checks, fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}
