/*
 * ABI-level test double for libnvidia-ml.so.1: the real symbol names and signatures (nvml.h), with
 * behaviour chosen by environment variables instead of a GPU driver.
 *   FAKE_NVML=h100x2             two "NVIDIA H100 80GB HBM3", compute capability 9.0 (default)
 *   FAKE_NVML=l40sx2             two "NVIDIA L40S", compute capability 8.9
 *   FAKE_NVML=mixed              an H100 (index 0) and an L40S (index 1)
 *   FAKE_NVML=none               the driver answers, with no GPUs
 *   FAKE_NVML=driver-not-loaded  nvmlInit_v2 fails with NVML_ERROR_DRIVER_NOT_LOADED (9)
 *   FAKE_NVML=hang               nvmlInit_v2 never returns (a wedged driver)
 *   FAKE_NVML=hang-forked        the same, after forking a helper that keeps stdout open for as long
 *                                as someone holds its read end (at most 120 s)
 * FAKE_NVML_LOG=<file> appends one line per call, so tests can check init/shutdown pairing.
 * FAKE_NVML_PID=<file> writes the pid of the process that called nvmlInit_v2 (was it killed?).
 * FAKE_NVML_AFTER=<file> makes nvmlInit_v2 wait until that file exists (e.g. another double's log):
 *   a driver that answers only once something else has happened, so tests can check an order.
 * FAKE_NVML_NOISE=1 prints a line to stdout from nvmlInit_v2, as chatty libraries do.
 * Built with -DFAKE_NVML_OLD it lacks nvmlSystemGetCudaDriverVersion, like an older driver.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int nvmlReturn_t;
typedef struct fake_device *nvmlDevice_t;
struct fake_device {
  unsigned int index;
};
static struct fake_device devices[2] = {{0}, {1}};
static int initialised = 0;

static const char *scenario(void) {
  const char *s = getenv("FAKE_NVML");
  return s != NULL && *s != '\0' ? s : "h100x2";
}

/* Whether the device is an L40S in this scenario (else an H100). */
static int is_l40s(const struct fake_device *d) {
  return strcmp(scenario(), "l40sx2") == 0 || (strcmp(scenario(), "mixed") == 0 && d->index == 1);
}

static void trace(const char *call) {
  const char *path = getenv("FAKE_NVML_LOG");
  if (path == NULL) return;
  FILE *f = fopen(path, "a");
  if (f == NULL) return;
  fprintf(f, "%s\n", call);
  fclose(f);
}

static nvmlReturn_t copy(char *dst, unsigned int size, const char *src) {
  if (strlen(src) + 1 > size) return 7; /* NVML_ERROR_INSUFFICIENT_SIZE */
  memcpy(dst, src, strlen(src) + 1);
  return 0;
}

static void write_pid(void) {
  const char *path = getenv("FAKE_NVML_PID");
  if (path == NULL) return;
  FILE *f = fopen(path, "w");
  if (f == NULL) return;
  fprintf(f, "%d\n", (int)getpid());
  fclose(f);
}

static void wait_for_file(void) {
  const char *path = getenv("FAKE_NVML_AFTER");
  if (path == NULL) return;
  while (access(path, F_OK) != 0) poll(NULL, 0, 10);
}

nvmlReturn_t nvmlInit_v2(void) {
  trace("nvmlInit_v2");
  write_pid();
  wait_for_file();
  if (getenv("FAKE_NVML_NOISE") != NULL) {
    printf("fake-nvml: initialising\n");
    fflush(stdout);
  }
  if (strcmp(scenario(), "driver-not-loaded") == 0) return 9;
  if (strcmp(scenario(), "hang-forked") == 0 && fork() == 0) {
    /* The write end of a pipe reports POLLERR once no reader is left: a caller that waits for the
     * pipes to close without letting go of them itself waits here for good (well, 120 s). */
    struct pollfd out = {STDOUT_FILENO, 0, 0};
    poll(&out, 1, 120 * 1000);
    _exit(0);
  }
  if (strncmp(scenario(), "hang", 4) == 0) {
    for (;;) pause();
  }
  initialised = 1;
  return 0;
}

nvmlReturn_t nvmlShutdown(void) {
  trace("nvmlShutdown");
  if (!initialised) return 1; /* NVML_ERROR_UNINITIALIZED */
  initialised = 0;
  return 0;
}

const char *nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 7: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    default: return "Unknown Error";
  }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
  if (!initialised) return 1;
  return copy(version, length, "570.86.15");
}

#ifndef FAKE_NVML_OLD
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
  if (!initialised) return 1;
  *version = 12080;
  return 0;
}
#endif

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
  if (!initialised) return 1;
  *count = strcmp(scenario(), "none") == 0 ? 0 : 2;
  return 0;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
  if (!initialised) return 1;
  if (index >= 2 || strcmp(scenario(), "none") == 0) return 2;
  *device = &devices[index];
  return 0;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
  if (!initialised || device == NULL) return 2;
  return copy(name, length, is_l40s(device) ? "NVIDIA L40S" : "NVIDIA H100 80GB HBM3");
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
  if (!initialised || device == NULL) return 2;
  return copy(uuid, length,
              device->index == 0 ? "GPU-11111111-2222-3333-4444-555555555555"
                                 : "GPU-66666666-7777-8888-9999-000000000000");
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
  if (!initialised || device == NULL) return 2;
  *major = is_l40s(device) ? 8 : 9;
  *minor = is_l40s(device) ? 9 : 0;
  return 0;
}
