/* The identity walker (see probes/identity.h, start_walk): reached by a tail call from the open
 * and exec probes, it walks the file's dentry chain into the record the probe left in its
 * per-CPU scratch, and sends that record. Loaded and installed in `walkers` by the sensor. */
int identity_walk(void *ctx) {
    u32 zero = 0;
    struct walk_ctx_t *w = walk_ctx.lookup(&zero);
    if (!w)
        return 0;
    if (w->target == WALK_OPEN) {
        struct file_event *e = file_scratch.lookup(&zero);
        if (!e)
            return 0;
        u32 used = w->used;
        if (used > PATH_LEN)
            used = PATH_LEN;
        u32 canon = file_identity(w->file, &e->id, e->path + used);
        u32 size = offsetof(struct file_event, path) + ((used + canon) & (2 * CANON_LEN - 1));
        e->h.size = size;
        if (output_record(e, size, w->wake) != 0)
            count_lost(e->h.kind);
        return 0;
    }
    struct exec_file_event *e = exec_file_scratch.lookup(&zero);
    if (!e)
        return 0;
    u32 canon = file_identity(w->file, &e->id, e->canon);
    send_exec_file(e, w->cg, canon, w->wake);
    return 0;
}
