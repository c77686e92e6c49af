/* The ring's hot path in C. walk(): monitor/bpf/ringbuf.py's walk(), several times faster. NativeDecoder: the records a busy sandbox sends most -> Events, record for
 * record what monitor/sensor/decode.py's RecordDecoder makes of them (the reference:
 * tests/test_sensor_fastdecode.py compares the two on crafted and generated batches):
 *   - open records (decode_file());
 *   - fork and exit (decode_sys(); an exit's pid joins the decoder's `exited` set);
 *   - exec, held in the decoder's `pending` dict by tid until its result (decode_exec()),
 *     the kernel's copy of its path (exec_file) and its result (exec_result), joined there.
 * Building an Event in Python costs ~1.5-3 us, here ~0.5. Every other record, and any record
 * out of the ordinary (denied, short, an argc beyond MAX_ARGS), goes to the Python decoder
 * through the `fallback` callable, in order.
 *
 * An Event is a slots dataclass: it is allocated with its type's tp_alloc and its slots are
 * filled through the member descriptors' offsets (what the generated __init__ does, without
 * its argument parsing). FIELDS are the slots it fills: decode.py uses it only when they are
 * exactly the Event's fields. Record layouts (probes/events.h, file.c, process.c) are restated
 * here; their sizes come from wire.py's constants, passed in at construction.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <sys/sysmacros.h>

/* probes/events.h struct hdr, probes/file.c struct file_event's fixed part (packed by nature) */
struct hdr {
    uint64_t ts, cgroup_id;
    uint32_t kind, pid, tid, uid, gid;
    int32_t result;
    uint32_t flags, size;
    char comm[16];
};
struct file_fixed {
    int32_t dfd, dfd2;
    uint32_t oflags, mode, repeats, path_used;
};
struct file_id {  /* probes/identity.h */
    uint64_t ino;
    uint32_t dev, nlink, mode, id_flags, canon_len, pad;
};
#define HDR_SIZE ((Py_ssize_t)sizeof(struct hdr))
#define ID_AT (HDR_SIZE + (Py_ssize_t)sizeof(struct file_fixed))
#define PATH_AT (ID_AT + (Py_ssize_t)sizeof(struct file_id))
#define SYS_ARGS_END (HDR_SIZE + 5 * 8)  /* probes/process.c struct sys_event: hdr, u64 a[5], ... */
#define EXEC_FILE_ID_AT (HDR_SIZE + 8)   /* struct exec_file_event: hdr, u64 old_pid, file_id, */
#define EXEC_FILE_NAME_AT (EXEC_FILE_ID_AT + (Py_ssize_t)sizeof(struct file_id))  /* filename, canon */
#define EXEC_PATH_AT (HDR_SIZE + 8)      /* struct exec_event: hdr, u32 argc, u32 pad, path, args */

enum { F_KIND, F_TIME_NS, F_PROCESS, F_SANDBOX, F_FILE, F_NET, F_CONTAINER, F_LLM, F_DETAIL,
       F_RESULT, F_VERDICT, F_SOURCE, F_ID, F_CGROUP_ID, F_HINTS, N_FIELDS };
static const char *FIELD_NAMES[N_FIELDS] = {
    "kind", "time_ns", "process", "sandbox", "file", "net", "container", "llm", "detail",
    "result", "verdict", "source", "id", "cgroup_id", "hints"};

/* keys and values of the dicts these events carry (interned once) */
enum { S_PID, S_TID, S_UID, S_GID, S_COMM, S_PATH, S_FLAGS, S_WRITE, S_MODE, S_REPEATS, S_DFD,
       S_OPEN, S_EBPF, S_FORK, S_EXIT, S_EXEC, S_CHILD_PID, S_CODE, S_SIGNAL, S_UNKNOWN,
       S_EXECUTABLE, S_ARGS, S_ARGS_TRUNCATED, S_ARGS_UNREADABLE, S_DENIED, S_REQUESTED, S_RESOLVED,
       S_DEV, S_INO, S_EXE, N_STRINGS };
static const char *STRING_TEXT[N_STRINGS] = {
    "pid", "tid", "uid", "gid", "comm", "path", "flags", "write", "mode", "repeats", "dfd",
    "open", "ebpf", "fork", "exit", "exec", "child_pid", "code", "signal", "unknown",
    "executable", "args", "args_truncated", "args_unreadable", "denied", "requested", "resolved",
    "dev", "ino", "exe"};
static PyObject *strings[N_STRINGS];

/* wire.py constants the decoder needs, read by name from the dict given at construction */
enum { C_K_OPEN, C_K_OPEN2, C_K_FORK, C_K_EXIT, C_K_EXEC, C_K_EXEC_FILE, C_K_EXEC_RESULT,
       C_F_DENIED, C_F_PATH_TRUNC, C_F_ARG_TRUNC, C_F_ARGS_TRUNC, C_F_UNREADABLE, C_O_CREAT,
       C_PATH_LEN, C_ARG_LEN, C_MAX_ARGS, C_STR_LEN, C_ENOENT, C_ID_RESOLVED, C_ID_DETACHED, N_CONSTANTS };
static const char *CONSTANT_NAMES[N_CONSTANTS] = {
    "K_OPEN", "K_OPEN2", "K_FORK", "K_EXIT", "K_EXEC", "K_EXEC_FILE", "K_EXEC_RESULT",
    "F_DENIED", "F_PATH_TRUNC", "F_ARG_TRUNC", "F_ARGS_TRUNC", "F_UNREADABLE", "O_CREAT",
    "PATH_LEN", "ARG_LEN", "MAX_ARGS", "STR_LEN", "ENOENT", "ID_RESOLVED", "ID_DETACHED"};

typedef struct {
    PyObject_HEAD
    PyTypeObject *event_type;
    Py_ssize_t offsets[N_FIELDS];
    long long wall_offset;
    long long c[N_CONSTANTS];
    PyObject *id_prefix;     /* str */
    PyObject *id_counter;    /* the iterator Python's new_id() draws from: one id sequence */
    PyObject *open_flags;    /* callable: oflags -> (names, write) */
    PyObject *pending;       /* dict tid -> exec Event waiting for its result (the decoder's own) */
    PyObject *exited;        /* set of pids whose exit record is in this batch (the decoder's own) */
    Py_ssize_t exec_enoent;  /* execs that failed with ENOENT on execvp's $PATH walk */
    Py_ssize_t unresolved;   /* opens and execs whose file got no canonical path (decode.py) */
    /* one-entry caches: a storm of records comes from few processes with few flag words */
    char last_comm[16];
    PyObject *last_comm_text;
    uint32_t last_oflags;
    PyObject *last_flag_names; /* list */
    PyObject *last_write;      /* bool */
} NativeDecoder;

static PyObject *slot(NativeDecoder *self, PyObject *event, int field) {
    return *(PyObject **)((char *)event + self->offsets[field]);
}

static void set_slot(NativeDecoder *self, PyObject *event, int field, PyObject *value) {
    Py_XSETREF(*(PyObject **)((char *)event + self->offsets[field]), value); /* steals value */
}

static PyObject *new_id(NativeDecoder *self) {
    PyObject *number = PyIter_Next(self->id_counter);
    if (number == NULL)
        return NULL;
    unsigned long long n = PyLong_AsUnsignedLongLong(number);
    Py_DECREF(number);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    char hex[17];
    int len = snprintf(hex, sizeof(hex), "%llx", n);
    PyObject *digits = PyUnicode_FromStringAndSize(hex, len);
    if (digits == NULL)
        return NULL;
    PyObject *id = PyUnicode_Concat(self->id_prefix, digits);
    Py_DECREF(digits);
    return id;
}

/* a NUL-terminated field of at most `room` bytes as text, as wire.cstr() */
static PyObject *cstr(const char *raw, Py_ssize_t room) {
    const char *nul = memchr(raw, 0, room);
    return PyUnicode_DecodeUTF8(raw, nul ? nul - raw : room, "backslashreplace");
}

static PyObject *comm_text(NativeDecoder *self, const char *comm) {
    if (self->last_comm_text == NULL || memcmp(self->last_comm, comm, 16) != 0) {
        PyObject *text = cstr(comm, 16);
        if (text == NULL)
            return NULL;
        Py_XSETREF(self->last_comm_text, text);
        memcpy(self->last_comm, comm, 16);
    }
    return Py_NewRef(self->last_comm_text);
}

static int flag_names(NativeDecoder *self, uint32_t oflags) {
    if (self->last_flag_names != NULL && self->last_oflags == oflags)
        return 0;
    PyObject *answer = PyObject_CallFunction(self->open_flags, "k", (unsigned long)oflags);
    if (answer == NULL)
        return -1;
    PyObject *names, *write;
    if (!PyArg_ParseTuple(answer, "OO", &names, &write)) {
        Py_DECREF(answer);
        return -1;
    }
    Py_XSETREF(self->last_flag_names, Py_NewRef(names));
    Py_XSETREF(self->last_write, Py_NewRef(write));
    self->last_oflags = oflags;
    Py_DECREF(answer);
    return 0;
}

/* dict from (key index, new reference) pairs; NULL values mean an error already raised */
static PyObject *dict_of(int count, const int *keys, PyObject **values) {
    PyObject *dict = NULL;
    for (int i = 0; i < count; i++)
        if (values[i] == NULL)
            goto done;
    dict = PyDict_New();
    if (dict == NULL)
        goto done;
    for (int i = 0; i < count; i++) {
        if (PyDict_SetItem(dict, strings[keys[i]], values[i]) < 0) {
            Py_CLEAR(dict);
            goto done;
        }
    }
done:
    for (int i = 0; i < count; i++)
        Py_XDECREF(values[i]);
    return dict;
}

static PyObject *process_of(NativeDecoder *self, const struct hdr *h) {
    static const int keys[] = {S_PID, S_TID, S_UID, S_GID, S_COMM};
    PyObject *values[] = {PyLong_FromUnsignedLong(h->pid), PyLong_FromUnsignedLong(h->tid),
                          PyLong_FromUnsignedLong(h->uid), PyLong_FromUnsignedLong(h->gid),
                          comm_text(self, h->comm)};
    return dict_of(5, keys, values);
}

/* An Event of the header's process from values indexed by F_* (new references or NULL for None;
 * all are consumed). NULL on error. */
static PyObject *make_event(NativeDecoder *self, const struct hdr *h, int kind_string, PyObject **values) {
    PyObject *event = NULL;
    int failed = PyErr_Occurred() != NULL; /* a value that could not be made */
    values[F_KIND] = Py_NewRef(strings[kind_string]);
    values[F_TIME_NS] = PyLong_FromLongLong((long long)h->ts + self->wall_offset);
    values[F_PROCESS] = failed ? NULL : process_of(self, h);
    values[F_SOURCE] = Py_NewRef(strings[S_EBPF]);
    values[F_ID] = failed ? NULL : new_id(self);
    values[F_CGROUP_ID] = PyLong_FromUnsignedLongLong(h->cgroup_id);
    for (int i = 0; i < N_FIELDS && !failed; i++) {
        if (values[i] == NULL) {
            if (PyErr_Occurred())
                failed = 1;
            else
                values[i] = Py_NewRef(Py_None);
        }
    }
    if (!failed)
        event = self->event_type->tp_alloc(self->event_type, 0);
    for (int i = 0; i < N_FIELDS; i++) {
        if (event != NULL)
            set_slot(self, event, i, values[i]);
        else
            Py_XDECREF(values[i]);
        values[i] = NULL;
    }
    return event;
}

static PyObject *one_item_dict(int key, PyObject *value) {
    const int keys[] = {key};
    PyObject *values[] = {value};
    return dict_of(1, keys, values);
}

/* a kernel dev_t (major << 20 | minor) as stat(2) gives it, as file.py's user_dev() */
static PyObject *user_dev(uint32_t dev) {
    return PyLong_FromUnsignedLongLong((unsigned long long)makedev(dev >> 20, dev & 0xFFFFF));
}

/* The canonical path sent at `at` (canon_len bytes with its NUL), as file.py's canonical_path(). */
static PyObject *canonical_at(const char *buf, Py_ssize_t size, Py_ssize_t at, uint32_t canon_len) {
    Py_ssize_t room = at < size ? size - at : 0;
    if ((Py_ssize_t)canon_len < room)
        room = canon_len;
    return cstr(buf + (room ? at : 0), room);
}

/* file.py's _identity(): a successful open's canonical path, requested path, resolved, dev, ino */
static int open_identity(NativeDecoder *self, PyObject *file, PyObject *path, const struct file_id *id,
                         const char *buf, Py_ssize_t size, Py_ssize_t canon_at) {
    PyObject *canonical = canonical_at(buf, size, canon_at, id->canon_len);
    if (canonical == NULL)
        return -1;
    int resolved = (id->id_flags & self->c[C_ID_RESOLVED]) && PyUnicode_GET_LENGTH(canonical) > 0;
    int status = 0;
    if (resolved) {
        int same = PyUnicode_Compare(canonical, path);
        if (same == -1 && PyErr_Occurred())
            status = -1;
        else if (same != 0)
            status = PyDict_SetItem(file, strings[S_REQUESTED], path) < 0
                     || PyDict_SetItem(file, strings[S_PATH], canonical) < 0 ? -1 : 0;
    } else {
        self->unresolved++;
    }
    Py_DECREF(canonical);
    if (status == 0)
        status = PyDict_SetItem(file, strings[S_RESOLVED], resolved ? Py_True : Py_False);
    if (status == 0 && id->ino) {
        PyObject *dev = user_dev(id->dev), *ino = PyLong_FromUnsignedLongLong(id->ino);
        if (dev == NULL || ino == NULL || PyDict_SetItem(file, strings[S_DEV], dev) < 0
                || PyDict_SetItem(file, strings[S_INO], ino) < 0)
            status = -1;
        Py_XDECREF(dev);
        Py_XDECREF(ino);
    }
    return status;
}

static PyObject *decode_open(NativeDecoder *self, const struct hdr *h, const char *buf, Py_ssize_t size) {
    struct file_fixed f;
    struct file_id id;
    memcpy(&f, buf + HDR_SIZE, sizeof(f));
    memcpy(&id, buf + ID_AT, sizeof(id));
    Py_ssize_t room = size - PATH_AT;
    if (room > self->c[C_PATH_LEN])
        room = self->c[C_PATH_LEN]; /* a rename's second path is not an open's */
    const char *raw_path = buf + PATH_AT;
    PyObject *values[N_FIELDS] = {0};
    PyObject *path = cstr(raw_path, room);
    if (path != NULL && flag_names(self, f.oflags) == 0) {
        static const int keys[] = {S_PATH, S_FLAGS, S_WRITE, S_MODE};
        int created = (f.oflags & self->c[C_O_CREAT]) != 0;
        PyObject *file[] = {Py_NewRef(path), Py_NewRef(self->last_flag_names), Py_NewRef(self->last_write),
                            created ? PyLong_FromUnsignedLong(f.mode & 07777) : NULL};
        values[F_FILE] = dict_of(created ? 4 : 3, keys, file);
        Py_ssize_t canon_at = PATH_AT + (f.path_used < self->c[C_PATH_LEN] ? f.path_used : self->c[C_PATH_LEN]);
        if (values[F_FILE] != NULL && h->result >= 0
                && open_identity(self, values[F_FILE], path, &id, buf, size, canon_at) < 0)
            Py_CLEAR(values[F_FILE]);
    }
    Py_XDECREF(path);
    if (f.repeats && !PyErr_Occurred())
        values[F_DETAIL] = one_item_dict(S_REPEATS, PyLong_FromUnsignedLong(f.repeats));
    if ((room == 0 || raw_path[0] != '/') && !PyErr_Occurred())  /* relative, or empty */
        values[F_HINTS] = one_item_dict(S_DFD, PyLong_FromLong(f.dfd));
    values[F_RESULT] = PyLong_FromLong(h->result);
    return make_event(self, h, S_OPEN, values);
}

static PyObject *decode_fork_or_exit(NativeDecoder *self, const struct hdr *h, const char *buf) {
    uint64_t a[2];
    memcpy(a, buf + HDR_SIZE, sizeof(a));
    PyObject *values[N_FIELDS] = {0};
    if (h->kind == self->c[C_K_FORK]) {
        values[F_DETAIL] = one_item_dict(S_CHILD_PID, PyLong_FromUnsignedLongLong(a[0]));
    } else {
        PyObject *pid = PyLong_FromUnsignedLong(h->pid);
        if (pid == NULL || PySet_Add(self->exited, pid) < 0) {
            Py_XDECREF(pid);
            return NULL;
        }
        Py_DECREF(pid);
        values[F_DETAIL] = a[0] ? one_item_dict(S_CODE, PyLong_FromUnsignedLongLong(a[1] & 0xFF))
                                : one_item_dict(S_SIGNAL, Py_NewRef(strings[S_UNKNOWN]));
    }
    values[F_RESULT] = PyLong_FromLong(h->result);
    return make_event(self, h, h->kind == self->c[C_K_FORK] ? S_FORK : S_EXIT, values);
}

/* An exec goes into `pending` (by tid) until its result; 0 when held, -1 on error. */
static int hold_exec(NativeDecoder *self, const struct hdr *h, const char *buf, uint32_t argc) {
    const char *args_at = buf + EXEC_PATH_AT + self->c[C_PATH_LEN];
    PyObject *values[N_FIELDS] = {0};
    PyObject *args = PyList_New(argc);
    for (uint32_t i = 0; args != NULL && i < argc; i++) {
        PyObject *arg = cstr(args_at + i * self->c[C_ARG_LEN], self->c[C_ARG_LEN]);
        if (arg == NULL)
            Py_CLEAR(args);
        else
            PyList_SET_ITEM(args, i, arg);
    }
    PyObject *executable = args ? cstr(buf + EXEC_PATH_AT, self->c[C_PATH_LEN]) : NULL;
    long long truncated = self->c[C_F_ARG_TRUNC] | self->c[C_F_ARGS_TRUNC] | self->c[C_F_PATH_TRUNC];
    if (executable != NULL && h->flags & (truncated | self->c[C_F_UNREADABLE])) {
        values[F_DETAIL] = PyDict_New();
        if (values[F_DETAIL] != NULL && (
                ((h->flags & truncated) && PyDict_SetItem(values[F_DETAIL], strings[S_ARGS_TRUNCATED], Py_True) < 0)
                || ((h->flags & self->c[C_F_UNREADABLE])
                    && PyDict_SetItem(values[F_DETAIL], strings[S_ARGS_UNREADABLE], Py_True) < 0)))
            Py_CLEAR(values[F_DETAIL]);
    }
    PyObject *event = executable ? make_event(self, h, S_EXEC, values) : NULL;
    int status = -1;
    if (event != NULL) {
        PyObject *process = slot(self, event, F_PROCESS);
        PyObject *tid = PyLong_FromUnsignedLong(h->tid);
        if (tid != NULL && PyDict_SetItem(process, strings[S_EXECUTABLE], executable) == 0
                && PyDict_SetItem(process, strings[S_ARGS], args) == 0
                && PyDict_SetItem(self->pending, tid, event) == 0)
            status = 0;
        Py_XDECREF(tid);
    }
    for (int i = 0; i < N_FIELDS; i++)
        Py_XDECREF(values[i]);
    Py_XDECREF(event);
    Py_XDECREF(executable);
    Py_XDECREF(args);
    return status;
}

/* The pending exec of a tid, borrowed (NULL: none; *error on a failed lookup). */
static PyObject *pending_exec(NativeDecoder *self, uint64_t tid, int *error) {
    PyObject *key = PyLong_FromUnsignedLongLong(tid);
    if (key == NULL) {
        *error = 1;
        return NULL;
    }
    PyObject *event = PyDict_GetItemWithError(self->pending, key);
    Py_DECREF(key);
    *error = event == NULL && PyErr_Occurred();
    return event;
}

/* hints["exe"] = (dev, ino, nlink, id_flags, canonical path), in a new hints dict (decode.py) */
static int set_exe_hint(NativeDecoder *self, PyObject *event, const struct file_id *id, const char *buf,
                        Py_ssize_t size) {
    PyObject *old = slot(self, event, F_HINTS);
    PyObject *hints = PyDict_Check(old) ? PyDict_Copy(old) : PyDict_New();
    PyObject *canonical = canonical_at(buf, size, EXEC_FILE_NAME_AT + self->c[C_STR_LEN], id->canon_len);
    PyObject *exe = canonical ? Py_BuildValue("(NKkkN)", user_dev(id->dev), (unsigned long long)id->ino,
                                              (unsigned long)id->nlink, (unsigned long)id->id_flags, canonical)
                              : NULL;
    if (hints == NULL || exe == NULL || PyDict_SetItem(hints, strings[S_EXE], exe) < 0) {
        Py_XDECREF(hints);
        Py_XDECREF(exe);
        return -1;
    }
    Py_DECREF(exe);
    set_slot(self, event, F_HINTS, hints);
    if (!(id->id_flags & (self->c[C_ID_RESOLVED] | self->c[C_ID_DETACHED])))
        self->unresolved++;
    return 0;
}

/* sched_process_exec: the kernel's copy of the path fills in what user memory did not give; the
 * identity of the file the image runs from goes to hints["exe"]. */
static int join_exec_file(NativeDecoder *self, const struct hdr *h, const char *buf, Py_ssize_t size) {
    uint64_t old_pid;
    struct file_id id;
    int error = 0;
    memcpy(&old_pid, buf + HDR_SIZE, sizeof(old_pid));
    memcpy(&id, buf + EXEC_FILE_ID_AT, sizeof(id));
    PyObject *event = pending_exec(self, old_pid, &error);
    if (event == NULL && !error)
        event = pending_exec(self, h->tid, &error);
    if (event == NULL)
        return error ? -1 : 0;
    PyObject *process = slot(self, event, F_PROCESS);
    PyObject *known = PyDict_Check(process) ? PyDict_GetItemWithError(process, strings[S_EXECUTABLE]) : NULL;
    if (PyErr_Occurred())
        return -1;
    if (PyDict_Check(process) && (known == NULL || !PyObject_IsTrue(known))) {
        Py_ssize_t room = size - EXEC_FILE_NAME_AT < self->c[C_STR_LEN] ? size - EXEC_FILE_NAME_AT : self->c[C_STR_LEN];
        PyObject *path = cstr(buf + EXEC_FILE_NAME_AT, room);
        int failed = path == NULL || PyDict_SetItem(process, strings[S_EXECUTABLE], path) < 0;
        Py_XDECREF(path);
        if (failed)
            return -1;
    }
    if (set_exe_hint(self, event, &id, buf, size) < 0)
        return -1;
    if (h->flags & self->c[C_F_DENIED])
        set_slot(self, event, F_VERDICT, Py_NewRef(strings[S_DENIED]));
    return 0;
}

/* The exec's result: the exec Event, now complete (NULL with *held when there is none to
 * report: no pending exec, or execvp's ENOENT walk along $PATH, counted). */
static PyObject *join_exec_result(NativeDecoder *self, const struct hdr *h, int *held) {
    PyObject *key = PyLong_FromUnsignedLong(h->tid);
    if (key == NULL)
        return NULL;
    PyObject *event = PyDict_GetItemWithError(self->pending, key);
    if (event != NULL) {
        Py_INCREF(event);
        if (PyDict_DelItem(self->pending, key) < 0)
            Py_CLEAR(event);
    }
    Py_DECREF(key);
    if (event == NULL) {
        *held = !PyErr_Occurred();
        return NULL;
    }
    set_slot(self, event, F_RESULT, PyLong_FromLong(h->result));
    if (h->result == -self->c[C_ENOENT] && slot(self, event, F_VERDICT) == Py_None) {
        self->exec_enoent++;
        Py_DECREF(event);
        *held = 1;
        return NULL;
    }
    return event;
}

/* One record: an Event (new reference); NULL with *status 0: not ours (the fallback decodes it),
 * 1: consumed with nothing to report, -1: an error is set. */
static PyObject *decode_record(NativeDecoder *self, const char *buf, Py_ssize_t size, int *status) {
    struct hdr h;
    *status = 0;
    if (size < HDR_SIZE)
        return NULL;
    memcpy(&h, buf, sizeof(h));
    long long *c = self->c;
    if (h.flags & c[C_F_DENIED] && h.kind != c[C_K_EXEC_FILE])
        return NULL;
    PyObject *event = NULL;
    int held = 0;
    if ((h.kind == c[C_K_OPEN] || h.kind == c[C_K_OPEN2]) && size >= PATH_AT) {
        event = decode_open(self, &h, buf, size);
    } else if ((h.kind == c[C_K_FORK] || h.kind == c[C_K_EXIT])
               && (size == SYS_ARGS_END || size >= SYS_ARGS_END + 3 * c[C_STR_LEN])) {
        /* what the probe sends, or the whole struct (decode_sys() refuses sizes in between) */
        event = decode_fork_or_exit(self, &h, buf);
    } else if (h.kind == c[C_K_EXEC] && size >= EXEC_PATH_AT + c[C_PATH_LEN]) {
        uint32_t argc;
        memcpy(&argc, buf + HDR_SIZE, sizeof(argc));
        if (argc > c[C_MAX_ARGS] || size < EXEC_PATH_AT + c[C_PATH_LEN] + (Py_ssize_t)argc * c[C_ARG_LEN])
            return NULL;
        held = hold_exec(self, &h, buf, argc) == 0;
    } else if (h.kind == c[C_K_EXEC_FILE] && size >= EXEC_FILE_NAME_AT) {
        held = join_exec_file(self, &h, buf, size) == 0;
    } else if (h.kind == c[C_K_EXEC_RESULT]) {
        event = join_exec_result(self, &h, &held);
    } else {
        return NULL;
    }
    *status = event != NULL ? 0 : held ? 1 : -1;
    return event;
}

PyDoc_STRVAR(decode_doc,
"decode(records, fallback) -> list of Events, in record order.\n\n"
"Open, fork, exit and exec records are decoded here; every other record is passed to\n"
"fallback(record), whose result is appended unless it is None.");

static PyObject *NativeDecoder_decode(NativeDecoder *self, PyObject *args) {
    PyObject *records, *fallback;
    if (!PyArg_ParseTuple(args, "O!O:decode", &PyList_Type, &records, &fallback))
        return NULL;
    PyObject *events = PyList_New(0);
    if (events == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *event = NULL;
        int status = 0;
        if (PyBytes_Check(record))
            event = decode_record(self, PyBytes_AS_STRING(record), PyBytes_GET_SIZE(record), &status);
        if (status < 0)
            goto fail;
        if (status > 0)
            continue;
        if (event == NULL) {
            event = PyObject_CallOneArg(fallback, record);
            if (event == NULL)
                goto fail;
            if (event == Py_None) {
                Py_DECREF(event);
                continue;
            }
        }
        int appended = PyList_Append(events, event);
        Py_DECREF(event);
        if (appended < 0)
            goto fail;
    }
    return events;
fail:
    Py_DECREF(events);
    return NULL;
}

#define BUSY_BIT (1u << 31)
#define DISCARD_BIT (1u << 30)

PyDoc_STRVAR(walk_doc,
"walk(data, base, mask, consumer, producer, limit=no limit) -> (records, consumer, discarded)\n\n"
"As monitor.bpf.ringbuf.walk: committed records from consumer up to producer, the first\n"
"record still being written, or limit records.");

static PyObject *walk(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"data", "base", "mask", "consumer", "producer", "limit", NULL};
    Py_buffer view;
    Py_ssize_t base, limit = PY_SSIZE_T_MAX;
    unsigned long long mask, consumer, producer;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*nKKK|n:walk", kwlist, &view, &base, &mask,
                                     &consumer, &producer, &limit))
        return NULL;
    PyObject *records = PyList_New(0);
    Py_ssize_t discarded = 0;
    const char *data = view.buf;
    while (records != NULL && consumer < producer && PyList_GET_SIZE(records) < limit) {
        Py_ssize_t at = base + (Py_ssize_t)(consumer & mask);
        uint32_t length;
        if (at < 0 || at + 8 > view.len)
            break;
        memcpy(&length, data + at, 4);
        if (length & BUSY_BIT)
            break;
        Py_ssize_t size = length & ~(BUSY_BIT | DISCARD_BIT);
        if (at + 8 + size > view.len)
            break; /* a length the ring cannot hold: stop, as Python's slice would come up short */
        if (length & DISCARD_BIT) {
            discarded++;
        } else {
            PyObject *record = PyBytes_FromStringAndSize(data + at + 8, size);
            if (record == NULL || PyList_Append(records, record) < 0)
                Py_CLEAR(records);
            Py_XDECREF(record);
        }
        consumer += (size + 8 + 7) & ~7ull;
    }
    PyBuffer_Release(&view);
    if (records == NULL)
        return NULL;
    return Py_BuildValue("(NKn)", records, consumer, discarded);
}

static PyMethodDef module_methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walk, METH_VARARGS | METH_KEYWORDS, walk_doc},
    {NULL},
};

static int field_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset) {
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL)
        return -1;
    int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type)
             && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
    if (ok)
        *offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    if (!ok)
        PyErr_Format(PyExc_TypeError, "Event.%s is not a slot", name);
    return ok ? 0 : -1;
}

static int NativeDecoder_init(NativeDecoder *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"event_type", "wall_offset", "id_prefix", "id_counter", "open_flags",
                             "constants", "pending", "exited", NULL};
    PyObject *event_type, *id_prefix, *id_counter, *open_flags, *constants, *pending, *exited;
    long long wall_offset;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!LUOOO!O!O!", kwlist, &PyType_Type, &event_type,
                                     &wall_offset, &id_prefix, &id_counter, &open_flags,
                                     &PyDict_Type, &constants, &PyDict_Type, &pending, &PySet_Type, &exited))
        return -1;
    for (int i = 0; i < N_FIELDS; i++)
        if (field_offset((PyTypeObject *)event_type, FIELD_NAMES[i], &self->offsets[i]) < 0)
            return -1;
    for (int i = 0; i < N_CONSTANTS; i++) {
        PyObject *value = PyDict_GetItemString(constants, CONSTANT_NAMES[i]);
        if (value == NULL) {
            PyErr_Format(PyExc_KeyError, "constants: no %s", CONSTANT_NAMES[i]);
            return -1;
        }
        self->c[i] = PyLong_AsLongLong(value);
        if (self->c[i] == -1 && PyErr_Occurred())
            return -1;
    }
    Py_XSETREF(self->event_type, (PyTypeObject *)Py_NewRef(event_type));
    Py_XSETREF(self->id_prefix, Py_NewRef(id_prefix));
    Py_XSETREF(self->id_counter, Py_NewRef(id_counter));
    Py_XSETREF(self->open_flags, Py_NewRef(open_flags));
    Py_XSETREF(self->pending, Py_NewRef(pending));
    Py_XSETREF(self->exited, Py_NewRef(exited));
    self->wall_offset = wall_offset;
    return 0;
}

static void NativeDecoder_dealloc(NativeDecoder *self) {
    Py_XDECREF(self->event_type);
    Py_XDECREF(self->id_prefix);
    Py_XDECREF(self->id_counter);
    Py_XDECREF(self->open_flags);
    Py_XDECREF(self->pending);
    Py_XDECREF(self->exited);
    Py_XDECREF(self->last_comm_text);
    Py_XDECREF(self->last_flag_names);
    Py_XDECREF(self->last_write);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef NativeDecoder_methods[] = {
    {"decode", (PyCFunction)NativeDecoder_decode, METH_VARARGS, decode_doc},
    {NULL},
};

static PyMemberDef NativeDecoder_members[] = {
    {"exec_enoent", T_PYSSIZET, offsetof(NativeDecoder, exec_enoent), READONLY,
     "execs that failed with ENOENT on execvp's walk along $PATH (joined here, not reported)"},
    {"unresolved", T_PYSSIZET, offsetof(NativeDecoder, unresolved), READONLY,
     "opens and execs whose file got no canonical path (reported with resolved: false)"},
    {NULL},
};

static PyTypeObject NativeDecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monitor.sensor._fastdecode.NativeDecoder",
    .tp_basicsize = sizeof(NativeDecoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Open, fork, exit and exec records -> Events (see the module's comment).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)NativeDecoder_init,
    .tp_dealloc = (destructor)NativeDecoder_dealloc,
    .tp_methods = NativeDecoder_methods,
    .tp_members = NativeDecoder_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastdecode",
    .m_doc = "The ring's hot path in C: walk (ringbuf.py), the busiest records -> Events (decode.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastdecode(void) {
    for (int i = 0; i < N_STRINGS; i++)
        if ((strings[i] = PyUnicode_InternFromString(STRING_TEXT[i])) == NULL)
            return NULL;
    if (PyType_Ready(&NativeDecoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *fields = PyTuple_New(N_FIELDS);
    if (fields == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (int i = 0; i < N_FIELDS; i++)
        PyTuple_SET_ITEM(fields, i, PyUnicode_FromString(FIELD_NAMES[i]));
    if (PyModule_AddObject(m, "FIELDS", fields) < 0
        || PyModule_AddObject(m, "NativeDecoder", Py_NewRef((PyObject *)&NativeDecoderType)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
