#include "placement.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void sched_machine_init(struct sched_machine *m)
{
    memset(m, 0, sizeof *m);
    CPU_ZERO(&m->cpus);
    snprintf(m->gpu_source, sizeof m->gpu_source, "none");
}

/* An index ("0", "12") or a UUID ("GPU-...", "MIG-..."): what CUDA accepts. */
static int visible_entry_ok(const char *s, size_t n)
{
    if (n == 0 || n >= SCHED_GPU_ID_MAX)
        return 0;
    if ((n > 4 && strncmp(s, "GPU-", 4) == 0) || (n > 4 && strncmp(s, "MIG-", 4) == 0)) {
        for (size_t i = 4; i < n; i++)
            if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
                  (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '-' || s[i] == '/'))
                return 0;
        return 1;
    }
    if (n > 4)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

void sched_machine_gpus_visible(struct sched_machine *m, const char *value)
{
    const char *p = value;
    m->n_gpus = 0;
    snprintf(m->gpu_source, sizeof m->gpu_source, "CUDA_VISIBLE_DEVICES");
    while (*p && m->n_gpus <= SCHED_MAX_GPU) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, ",");
        size_t t = n;
        while (t > 0 && p[t - 1] == ' ')
            t--;
        if (!visible_entry_ok(p, t))
            break;
        memcpy(m->gpus[m->n_gpus], p, t);
        m->gpus[m->n_gpus][t] = '\0';
        m->n_gpus++;
        p += n;
        if (*p == ',')
            p++;
    }
}

void sched_machine_gpus_smi(struct sched_machine *m, FILE *out)
{
    char line[512];
    int at_start = 1;
    m->n_gpus = 0;
    snprintf(m->gpu_source, sizeof m->gpu_source, "nvidia-smi -L");
    /* A line longer than the buffer arrives in pieces; only a piece that begins a line
     * may count, so a long line cannot count twice. */
    while (fgets(line, sizeof line, out)) {
        int starts = at_start;
        at_start = strchr(line, '\n') != NULL;
        if (!starts || strncmp(line, "GPU ", 4) != 0 || m->n_gpus > SCHED_MAX_GPU)
            continue;
        snprintf(m->gpus[m->n_gpus], sizeof m->gpus[0], "%d", m->n_gpus);
        m->n_gpus++;
    }
}

int sched_machine_probe(struct sched_machine *m, struct cerr *e)
{
    sched_machine_init(m);
    if (sched_getaffinity(0, sizeof m->cpus, &m->cpus) != 0)
        return cerr_set(e, CORRAL_EIO, "cannot read this process's CPU affinity "
                        "(sched_getaffinity): %s", strerror(errno));
    m->n_cpus = CPU_COUNT(&m->cpus);
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    if (cvd) {
        sched_machine_gpus_visible(m, cvd);
        return CORRAL_OK;
    }
    /* nvidia-smi lists every GPU the driver sees; without it (or without a driver) it
     * prints no "GPU " line, and the machine has none. Its own errors are not ours. */
    FILE *f = popen("nvidia-smi -L 2>/dev/null", "r");
    if (!f) {
        snprintf(m->gpu_source, sizeof m->gpu_source, "nvidia-smi -L");
        return CORRAL_OK;
    }
    sched_machine_gpus_smi(m, f);
    pclose(f);
    return CORRAL_OK;
}

void sched_cpuset_format(const cpu_set_t *s, char *buf, size_t len)
{
    size_t off = (size_t)snprintf(buf, len, "cpu:");
    int first = 1;
    for (int c = 0; c < CPU_SETSIZE && off < len; c++) {
        if (!CPU_ISSET(c, s))
            continue;
        int hi = c;
        while (hi + 1 < CPU_SETSIZE && CPU_ISSET(hi + 1, s))
            hi++;
        if (hi == c)
            off += (size_t)snprintf(buf + off, len - off, "%s%d", first ? "" : ",", c);
        else
            off += (size_t)snprintf(buf + off, len - off, "%s%d-%d", first ? "" : ",", c, hi);
        first = 0;
        c = hi;
    }
}

/* "cuda:0 to cuda:1 (2 GPUs, per nvidia-smi -L)" and the like, for messages. */
static void gpus_desc(const struct sched_machine *m, char *buf, size_t len)
{
    if (m->n_gpus == 0)
        snprintf(buf, len, "this machine has no GPU, per %s", m->gpu_source);
    else if (m->n_gpus == 1)
        snprintf(buf, len, "this machine has 1 GPU, cuda:0, per %s", m->gpu_source);
    else
        snprintf(buf, len, "this machine has %d GPUs, cuda:0 to cuda:%d, per %s", m->n_gpus,
                 m->n_gpus - 1, m->gpu_source);
}

static void replica_name(const struct sched_config *cfg, const struct sched_replica *r,
                         char *buf, size_t len)
{
    snprintf(buf, len, "%s#%d", cfg->models[r->model].name, r->index);
}

static void device_path(const struct sched_replica *r, char *buf, size_t len)
{
    snprintf(buf, len, "models[%zu].devices[%zu]", r->model, r->device);
}

/* Cores by how many replicas use them, then by number: the order "cpu" replicas pick in. */
static int by_use(const void *a, const void *b, void *use)
{
    int ca = *(const int *)a, cb = *(const int *)b, *u = use;
    if (u[ca] != u[cb])
        return u[ca] < u[cb] ? -1 : 1;
    return ca < cb ? -1 : ca > cb;
}

int sched_place(const struct sched_config *cfg, const struct sched_machine *m,
                struct sched_plan *plan, struct sched_errs *errs)
{
    return sched_place_keep(cfg, m, NULL, 0, plan, errs);
}

int sched_place_keep(const struct sched_config *cfg, const struct sched_machine *m,
                     const struct sched_replica *keep, size_t n_keep, struct sched_plan *plan,
                     struct sched_errs *errs)
{
    int rc = CORRAL_OK;
    size_t before = sched_errs_count(errs), n = 0, k = 0;
    int *core_use = NULL, *order = NULL, gpu_use[SCHED_MAX_GPU + 1] = {0};
    /* Per device entry: 1 it does not exist here (reported once, never placed), 2 and 8
     * a sharing already reported; a device given to 50 replicas is one mistake, not 50. */
    unsigned char (*said)[SCHED_MAX_DEVICES] = NULL;
    unsigned char *kept = NULL; /* per plan entry: placed as a running replica already is */
    char p[96], a[SCHED_NAME_MAX + 16] = "", b[SCHED_NAME_MAX + 16], da[64], db[64], g[400];

    memset(plan, 0, sizeof *plan);
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].valid)
            n += (size_t)cfg->models[i].replicas;
    core_use = calloc(CPU_SETSIZE, sizeof *core_use);
    order = calloc(CPU_SETSIZE, sizeof *order);
    said = calloc(cfg->n_models ? cfg->n_models : 1, sizeof *said);
    plan->replicas = n ? calloc(n, sizeof *plan->replicas) : NULL;
    kept = calloc(n ? n : 1, 1);
    if (!core_use || !order || !said || !kept || (n && !plan->replicas)) {
        sched_errs_add(errs, "models", "out of memory placing the replicas");
        rc = CORRAL_ENOMEM;
        goto fail;
    }
    plan->n = n;
    for (size_t i = 0; i < cfg->n_models; i++) {
        const struct sched_model *mo = &cfg->models[i];
        for (int j = 0; mo->valid && j < mo->replicas; j++) {
            struct sched_replica *r = &plan->replicas[k++];
            r->model = i;
            r->index = j;
            r->device = (size_t)j % mo->n_devices;
            r->dev = mo->devices[r->device];
            CPU_ZERO(&r->cpus);
        }
    }

    /* Replicas that run already keep their device and cores: each takes a slot of its
     * model, one on the same device entry when there is one. Their cores count as used
     * before any new "cpu" replica picks. */
    for (size_t q = 0; q < n_keep; q++) {
        const struct sched_replica *kr = &keep[q];
        size_t slot = n;
        for (size_t i = 0; i < n && slot == n; i++)
            if (!kept[i] && plan->replicas[i].model == kr->model &&
                plan->replicas[i].device == kr->device)
                slot = i;
        for (size_t i = 0; i < n && slot == n; i++)
            if (!kept[i] && plan->replicas[i].model == kr->model)
                slot = i;
        if (slot == n)
            continue; /* more kept than desired: the caller stops the rest */
        struct sched_replica *r = &plan->replicas[slot];
        kept[slot] = 1;
        r->from_keep = 1;
        r->keep_index = q;
        r->device = kr->device;
        r->dev = kr->dev;
        if (r->dev.kind == SCHED_DEV_CPU) {
            r->cpus = kr->cpus;
            r->n_cpus = CPU_COUNT(&r->cpus);
            for (int c = 0; c < CPU_SETSIZE; c++)
                if (CPU_ISSET(c, &r->cpus))
                    core_use[c]++;
        }
    }

    /* Every device entry that parsed must exist here, whether or not its model's other
     * fields passed and whether or not a replica lands on it: a config naming a GPU or
     * cores this machine lacks is wrong as written. */
    for (size_t i = 0; i < cfg->n_models; i++) {
        const struct sched_model *mo = &cfg->models[i];
        for (size_t d = 0; d < mo->n_devices; d++) {
            const struct sched_device *dv = &mo->devices[d];
            if (!dv->valid || dv->kind == SCHED_DEV_CPU)
                continue;
            snprintf(p, sizeof p, "models[%zu].devices[%zu]", i, d);
            sched_device_format(dv, da, sizeof da);
            if (dv->kind == SCHED_DEV_CUDA && dv->gpu >= m->n_gpus) {
                gpus_desc(m, g, sizeof g);
                sched_errs_add(errs, p, "%s is a device that does not exist (%s)", da, g);
                said[i][d] = 1;
            } else if (dv->kind == SCHED_DEV_CPU_FIXED) {
                for (int c = dv->lo; c <= dv->hi && !said[i][d]; c++)
                    said[i][d] = !CPU_ISSET(c, &m->cpus);
                if (said[i][d]) {
                    sched_cpuset_format(&m->cpus, g, sizeof g);
                    sched_errs_add(errs, p, "%s names cores this process may not use (it may "
                                   "use %s)", da, g);
                }
            }
        }
    }

    /* GPUs and fixed core sets first: they are what the config demands, and the cores
     * left over are what "cpu" replicas may pick from. */
    for (size_t i = 0; i < n; i++) {
        struct sched_replica *r = &plan->replicas[i];
        const struct sched_model *mo = &cfg->models[r->model];
        unsigned char *s = &said[r->model][r->device];
        if (*s & 1)
            continue; /* a device that does not exist here, already reported */
        device_path(r, p, sizeof p);
        sched_device_format(&r->dev, da, sizeof da);
        if (r->dev.kind == SCHED_DEV_CUDA) {
            if (gpu_use[r->dev.gpu] && !cfg->oversubscribe && !(*s & 2)) {
                for (size_t q = 0; q < i; q++)
                    if (plan->replicas[q].dev.kind == SCHED_DEV_CUDA &&
                        plan->replicas[q].dev.gpu == r->dev.gpu) {
                        replica_name(cfg, &plan->replicas[q], a, sizeof a);
                        break;
                    }
                replica_name(cfg, r, b, sizeof b);
                sched_errs_add(errs, p, "%s is already given to replica %s, so replica %s would "
                               "share it (one replica per GPU; set \"oversubscribe\": true to "
                               "share)", da, a, b);
                *s |= 2;
            }
            gpu_use[r->dev.gpu]++;
            snprintf(r->cuda_visible, sizeof r->cuda_visible, "%s", m->gpus[r->dev.gpu]);
        } else if (r->dev.kind == SCHED_DEV_CPU_FIXED) {
            for (size_t q = 0; q < i && !cfg->oversubscribe && !(*s & 8); q++) {
                const struct sched_replica *o = &plan->replicas[q];
                if (o->dev.kind != SCHED_DEV_CPU_FIXED || o->n_cpus == 0 ||
                    o->dev.hi < r->dev.lo || o->dev.lo > r->dev.hi)
                    continue;
                replica_name(cfg, o, a, sizeof a);
                replica_name(cfg, r, b, sizeof b);
                sched_device_format(&o->dev, db, sizeof db);
                sched_errs_add(errs, p, "%s of replica %s overlaps %s of replica %s (fixed core "
                               "sets must be disjoint; set \"oversubscribe\": true to share)",
                               da, b, db, a);
                *s |= 8;
            }
            for (int c = r->dev.lo; c <= r->dev.hi; c++) {
                CPU_SET(c, &r->cpus);
                core_use[c]++;
            }
            r->n_cpus = CPU_COUNT(&r->cpus);
            plan->cpu_threads += mo->threads;
        } else {
            plan->cpu_threads += mo->threads;
        }
    }

    if (plan->cpu_threads > m->n_cpus && !cfg->oversubscribe) {
        char list[200];
        size_t off = 0;
        list[0] = '\0';
        for (size_t i = 0; i < cfg->n_models && off < sizeof list; i++) {
            const struct sched_model *mo = &cfg->models[i];
            int cpu_reps = 0;
            for (int j = 0; mo->valid && j < mo->replicas; j++)
                cpu_reps += mo->devices[(size_t)j % mo->n_devices].kind != SCHED_DEV_CUDA;
            if (cpu_reps)
                off += (size_t)snprintf(list + off, sizeof list - off, "%s%s %d x %d",
                                        off ? ", " : "", mo->name, cpu_reps, mo->threads);
        }
        sched_cpuset_format(&m->cpus, g, sizeof g);
        sched_errs_add(errs, "models", "the CPU replicas need %d cores (replicas x threads: %s) "
                       "but this process may use %d (%s); lower replicas or threads, or set "
                       "\"oversubscribe\": true to share cores", plan->cpu_threads, list,
                       m->n_cpus, g);
    }

    /* "cpu" replicas take the least used cores, lowest first: free ones while any are
     * left (always, when the config fits), then the least shared. */
    for (int c = 0, k2 = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &m->cpus))
            order[k2++] = c;
    for (size_t i = 0; i < n && m->n_cpus > 0; i++) {
        struct sched_replica *r = &plan->replicas[i];
        if (r->dev.kind != SCHED_DEV_CPU || kept[i])
            continue;
        int want = cfg->models[r->model].threads;
        if (want > m->n_cpus)
            want = m->n_cpus;
        /* A sort per replica rather than a scan per thread keeps a large oversubscribed
         * config (thousands of replicas on a thousand cores) quick to check. */
        qsort_r(order, (size_t)m->n_cpus, sizeof *order, by_use, core_use);
        for (int t = 0; t < want; t++) {
            CPU_SET(order[t], &r->cpus);
            core_use[order[t]]++;
        }
        r->n_cpus = CPU_COUNT(&r->cpus);
    }

    for (size_t i = 0; i < n; i++) {
        struct sched_replica *r = &plan->replicas[i];
        if (r->dev.kind == SCHED_DEV_CUDA && r->cuda_visible[0])
            r->shared = gpu_use[r->dev.gpu] > 1;
        for (int c = 0; c < CPU_SETSIZE && r->n_cpus; c++)
            if (CPU_ISSET(c, &r->cpus) && core_use[c] > 1)
                r->shared = 1;
    }
    for (int c = 0; c < CPU_SETSIZE; c++)
        plan->cpu_cores += core_use[c] > 0;
    for (int gi = 0; gi <= SCHED_MAX_GPU; gi++)
        plan->gpus_used += gpu_use[gi] > 0;

    if (errs->oom)
        rc = CORRAL_ENOMEM;
    else if (sched_errs_count(errs) != before)
        rc = CORRAL_EINVAL;
fail:
    free(core_use);
    free(order);
    free(said);
    free(kept);
    return rc;
}

void sched_plan_free(struct sched_plan *plan)
{
    free(plan->replicas);
    memset(plan, 0, sizeof *plan);
}
