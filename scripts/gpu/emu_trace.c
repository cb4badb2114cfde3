// Kernel-launch trace for linrec's CUDA emulator, used by `scripts/gpu/run.sh --emu sanitize`
// to check that the sanitizer subset launches every CUDA kernel. Built as the only kernel
// module in the folder LINREC_EMU_KERNELS names, it loads the real modules (the .so files in
// $LINREC_EMU_TRACE_DIR, as tools/cuda-emu/build.sh makes them), forwards every lookup and
// launch to them, and appends the name of each launched kernel to $LINREC_EMU_TRACE_LOG.
//   cc -O2 -shared -fPIC -o trace/trace.so scripts/gpu/emu_trace.c -ldl
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*has_fn)(const char*);
typedef int (*launch_fn)(const char*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                         unsigned, void**);

static struct {
    has_fn has;
    launch_fn launch;
} mods[64];
static int nmods = -1;
static FILE* trace;

// The fake libcuda calls both entry points under its own lock: no locking here.
static void load(void) {
    if (nmods >= 0) return;
    nmods = 0;
    const char* log = getenv("LINREC_EMU_TRACE_LOG");
    if (log) trace = fopen(log, "a");
    const char* dir = getenv("LINREC_EMU_TRACE_DIR");
    DIR* d = dir ? opendir(dir) : NULL;
    if (!d) {
        fprintf(stderr, "emu_trace: cannot open LINREC_EMU_TRACE_DIR (%s)\n", dir ? dir : "unset");
        return;
    }
    struct dirent* e;
    while ((e = readdir(d)) && nmods < 64) {
        size_t n = strlen(e->d_name);
        if (n < 4 || strcmp(e->d_name + n - 3, ".so") != 0) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        void* so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!so) {
            fprintf(stderr, "emu_trace: %s\n", dlerror());
            continue;
        }
        has_fn h = (has_fn)dlsym(so, "linrec_emu_has");
        launch_fn l = (launch_fn)dlsym(so, "linrec_emu_launch");
        if (h && l) {
            mods[nmods].has = h;
            mods[nmods].launch = l;
            nmods++;
        }
    }
    closedir(d);
}

int linrec_emu_has(const char* name) {
    load();
    for (int i = 0; i < nmods; i++)
        if (mods[i].has(name)) return 1;
    return 0;
}

int linrec_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                      unsigned by, unsigned bz, unsigned smem, void** params) {
    load();
    for (int i = 0; i < nmods; i++)
        if (mods[i].has(name)) {
            if (trace) {
                fprintf(trace, "%s\n", name);
                fflush(trace);
            }
            return mods[i].launch(name, gx, gy, gz, bx, by, bz, smem, params);
        }
    return 1;
}
