// linrec's CUDA emulator, driver side: a libcuda.so stand-in with the driver-API calls that
// cudarc makes for linrec. "Device" memory is host memory (a CUdeviceptr is a host address),
// every stream is synchronous, events record host time, and cuModuleLoadData ignores the PTX
// image: functions are looked up by name in the kernel modules that tools/cuda-emu/build.sh
// compiled from kernels/**/*.cu (shared objects in $LINREC_EMU_KERNELS), and cuLaunchKernel
// runs them through linrec_emu_launch. It reports $LINREC_EMU_DEVICES devices (default 2, at
// most 16), each "linrec CUDA emulator (CPU)" of compute capability 9.0, so code that opens
// several devices in one process (and refuses one device's memory on another) can be tested
// without a GPU: each device has its own primary context, and the current context is tracked
// per thread as the driver does; the memory of every device is the same host memory.
#include <dirent.h>
#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
enum {
    OK = 0,
    ERR_INVALID_VALUE = 1,
    ERR_OOM = 2,
    ERR_INVALID_DEVICE = 101,
    ERR_INVALID_CONTEXT = 201,
    ERR_NOT_FOUND = 500,
    ERR_LAUNCH = 719
};

namespace {

struct Module {
    void* so;
    int (*has)(const char*);
    int (*launch)(const char*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                  unsigned, void**);
};
struct Function {
    std::string name;
    Module* m;
};
struct Event {
    double t = 0;
};

std::mutex mu;
std::vector<Module>& modules() {
    static std::vector<Module> v;
    static bool loaded = false;
    if (!loaded) {
        loaded = true;
        const char* dir = getenv("LINREC_EMU_KERNELS");
        if (!dir) {
            fprintf(stderr, "linrec cuda-emu: LINREC_EMU_KERNELS is not set\n");
            return v;
        }
        if (DIR* d = opendir(dir)) {
            while (dirent* e = readdir(d)) {
                std::string n = e->d_name;
                if (n.size() < 4 || n.substr(n.size() - 3) != ".so") continue;
                std::string path = std::string(dir) + "/" + n;
                void* so = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
                if (!so) {
                    fprintf(stderr, "linrec cuda-emu: %s\n", dlerror());
                    continue;
                }
                Module m{so, (int (*)(const char*))dlsym(so, "linrec_emu_has"),
                         (decltype(Module::launch))dlsym(so, "linrec_emu_launch")};
                if (m.has && m.launch) v.push_back(m);
            }
            closedir(d);
        }
    }
    return v;
}
double now() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
int dummy_stream, dummy_module, dummy_pool;

// Devices and their primary contexts (a context is the address of its device's slot).
constexpr int MAX_DEVICES = 16;
int primary_ctx[MAX_DEVICES];
int device_count() {
    static const int n = [] {
        const char* s = getenv("LINREC_EMU_DEVICES");
        int v = s && *s ? atoi(s) : 2;
        if (v < 1 || v > MAX_DEVICES) {
            fprintf(stderr, "linrec cuda-emu: LINREC_EMU_DEVICES=%s is not in 1..%d; using 2\n",
                    s, MAX_DEVICES);
            v = 2;
        }
        return v;
    }();
    return n;
}
thread_local void* current_ctx = nullptr;

}  // namespace

extern "C" {

CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return OK; }
CUresult cuDeviceGetCount(int* n) { *n = device_count(); return OK; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal < 0 || ordinal >= device_count()) return ERR_INVALID_DEVICE;
    *d = ordinal;
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "linrec CUDA emulator (CPU)");
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
        case 75: *v = 9; break;           // compute capability major
        case 76: *v = 0; break;           // minor
        case 1: *v = 1024; break;         // max threads per block
        case 2: case 3: *v = 1024; break; // max block dims
        case 4: *v = 1; break;
        case 5: *v = 2147483647; break;   // grid dims
        case 6: case 7: *v = 65535; break;
        case 8: *v = 49152; break;        // shared memory per block
        case 10: *v = 32; break;          // warp size
        case 16: *v = 1; break;           // multiprocessors
        case 97: *v = 232448; break;      // opt-in shared memory per block
        case 115: *v = 0; break;          // memory pools: use cuMemAlloc
        default: *v = 0;
    }
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) { *b = (size_t)16 << 30; return OK; }
CUresult cuDeviceGetUuid(void* u, CUdevice) { memset(u, 0, 16); return OK; }
CUresult cuDeviceGetUuid_v2(void* u, CUdevice) { memset(u, 0, 16); return OK; }
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    if (d < 0 || d >= device_count()) return ERR_INVALID_DEVICE;
    *ctx = &primary_ctx[d];
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return OK; }
CUresult cuDeviceGetDefaultMemPool(void** p, CUdevice) { *p = &dummy_pool; return OK; }
CUresult cuCtxSetCurrent(void* c) {
    for (int d = 0; d < device_count(); d++)
        if (c == &primary_ctx[d]) {
            current_ctx = c;
            return OK;
        }
    if (c) return ERR_INVALID_CONTEXT;
    current_ctx = nullptr;  // unbinds, as the driver does
    return OK;
}
CUresult cuCtxGetCurrent(void** c) { *c = current_ctx; return OK; }
CUresult cuCtxSynchronize() { return OK; }
CUresult cuCtxSetFlags(unsigned) { return OK; }
CUresult cuMemGetInfo_v2(size_t* f, size_t* t) { *f = *t = (size_t)16 << 30; return OK; }
CUresult cuStreamCreate(void** s, unsigned) { *s = &dummy_stream; return OK; }
CUresult cuStreamDestroy_v2(void*) { return OK; }
CUresult cuStreamSynchronize(void*) { return OK; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
CUresult cuEventCreate(void** e, unsigned) { *e = new Event; return OK; }
CUresult cuEventDestroy_v2(void* e) { delete (Event*)e; return OK; }
CUresult cuEventRecord(void* e, void*) { ((Event*)e)->t = now(); return OK; }
CUresult cuEventSynchronize(void*) { return OK; }
CUresult cuEventQuery(void*) { return OK; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = (float)(((Event*)b)->t - ((Event*)a)->t);
    return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    void* m = aligned_alloc(256, (n + 255) / 256 * 256 + 256);
    if (!m) return ERR_OOM;
    memset(m, 0xcd, n);  // garbage, as real allocations hold
    *p = (CUdeviceptr)m;
    return OK;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, void*) { return cuMemAlloc_v2(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) { free((void*)p); return OK; }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { memset((void*)p, v, n); return OK; }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(p, v, n); }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { memcpy((void*)d, s, n); return OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) { return cuMemcpyHtoD_v2(d, s, n); }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { memcpy(d, (void*)s, n); return OK; }
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoH_v2(d, s, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { memmove((void*)d, (void*)s, n); return OK; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoD_v2(d, s, n); }
CUresult cuModuleLoadData(void** m, const void*) {
    std::lock_guard<std::mutex> g(mu);
    modules();
    *m = &dummy_module;
    return OK;
}
CUresult cuModuleUnload(void*) { return OK; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    std::lock_guard<std::mutex> g(mu);
    for (auto& m : modules())
        if (m.has(name)) {
            *f = new Function{name, &m};
            return OK;
        }
    fprintf(stderr, "linrec cuda-emu: no kernel named %s\n", name);
    return ERR_NOT_FOUND;
}
CUresult cuFuncSetAttribute(void*, int, int) { return OK; }
CUresult cuFuncGetAttribute(int* v, int, void*) { *v = 0; return OK; }
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned smem, void*, void** params, void**) {
    std::lock_guard<std::mutex> g(mu);
    Function* fn = (Function*)f;
    return fn->m->launch(fn->name.c_str(), gx, gy, gz, bx, by, bz, smem, params) ? ERR_LAUNCH : OK;
}
CUresult cuGetErrorName(CUresult, const char** s) { *s = "CUDA_ERROR_EMULATED"; return OK; }
CUresult cuGetErrorString(CUresult, const char** s) { *s = "error in the linrec CUDA emulator"; return OK; }

}  // extern "C"
