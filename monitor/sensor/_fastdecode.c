/* The ring's hot path in C. walk(): monitor/sensor/ringbuf.py's walk() (~0.05 us a record
 * against ~0.25). OpenDecoder: open records -> Events, the hot path of
 * monitor/sensor/decode.py, record for record the
 * same Events as decode_file() (tests/test_sensor_fastdecode.py compares the two on real and
 * crafted records). Opens are most of what a busy sandbox sends; building each Event in Python
 * cost ~1.5 us, here ~0.5 us. Every other record (and any open out of the ordinary: denied,
 * short) goes to the Python decoder through the `fallback` callable, in order.
 *
 * An Event is a slots dataclass: it is allocated with its type's tp_alloc and its slots are
 * filled through the member descriptors' offsets (what the generated __init__ does, without
 * its argument parsing). FIELDS are the slots it fills: decode.py uses it only when they are
 * exactly the Event's fields.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* probes/events.h struct hdr and probes/file.c struct file_event (packed by nature) */
struct hdr {
    uint64_t ts, cgroup_id;
    uint32_t kind, pid, tid, uid, gid;
    int32_t result;
    uint32_t flags, size;
    char comm[16];
};
struct file_fixed {
    int32_t dfd, dfd2;
    uint32_t oflags, mode, repeats, pad;
};
#define HDR_SIZE ((Py_ssize_t)sizeof(struct hdr))
#define PATH_AT (HDR_SIZE + (Py_ssize_t)sizeof(struct file_fixed))

enum { F_KIND, F_TIME_NS, F_PROCESS, F_SANDBOX, F_FILE, F_NET, F_CONTAINER, F_LLM, F_DETAIL,
       F_RESULT, F_VERDICT, F_SOURCE, F_ID, F_CGROUP_ID, F_HINTS, N_FIELDS };
static const char *FIELD_NAMES[N_FIELDS] = {
    "kind", "time_ns", "process", "sandbox", "file", "net", "container", "llm", "detail",
    "result", "verdict", "source", "id", "cgroup_id", "hints"};

/* keys of the dicts an open event carries (interned once) */
enum { S_PID, S_TID, S_UID, S_GID, S_COMM, S_PATH, S_FLAGS, S_WRITE, S_MODE, S_REPEATS, S_DFD,
       S_OPEN, S_EBPF, N_STRINGS };
static const char *STRING_TEXT[N_STRINGS] = {
    "pid", "tid", "uid", "gid", "comm", "path", "flags", "write", "mode", "repeats", "dfd",
    "open", "ebpf"};
static PyObject *strings[N_STRINGS];

typedef struct {
    PyObject_HEAD
    PyTypeObject *event_type;
    Py_ssize_t offsets[N_FIELDS];
    long long wall_offset;
    PyObject *id_prefix;     /* str */
    PyObject *id_counter;    /* the iterator Python's new_id() draws from: one id sequence */
    PyObject *open_flags;    /* callable: oflags -> (names, write) */
    uint32_t k_open, k_open2, f_denied, o_creat;
    Py_ssize_t path_len;     /* wire.PATH_LEN */
    /* one-entry caches: a storm of opens comes from few processes with few flag words */
    char last_comm[16];
    PyObject *last_comm_text;
    uint32_t last_oflags;
    PyObject *last_flag_names; /* list */
    PyObject *last_write;      /* bool */
} OpenDecoder;

static void set_slot(PyObject *event, Py_ssize_t offset, PyObject *value) {
    *(PyObject **)((char *)event + offset) = value; /* steals the reference */
}

static PyObject *new_id(OpenDecoder *self) {
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

static PyObject *comm_text(OpenDecoder *self, const char *comm) {
    if (self->last_comm_text == NULL || memcmp(self->last_comm, comm, 16) != 0) {
        PyObject *text = PyUnicode_DecodeUTF8(comm, strnlen(comm, 16), "backslashreplace");
        if (text == NULL)
            return NULL;
        Py_XSETREF(self->last_comm_text, text);
        memcpy(self->last_comm, comm, 16);
    }
    return Py_NewRef(self->last_comm_text);
}

static int flag_names(OpenDecoder *self, uint32_t oflags) {
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

static PyObject *process_of(OpenDecoder *self, const struct hdr *h) {
    static const int keys[] = {S_PID, S_TID, S_UID, S_GID, S_COMM};
    PyObject *values[] = {PyLong_FromUnsignedLong(h->pid), PyLong_FromUnsignedLong(h->tid),
                          PyLong_FromUnsignedLong(h->uid), PyLong_FromUnsignedLong(h->gid),
                          comm_text(self, h->comm)};
    return dict_of(5, keys, values);
}

static PyObject *file_of(OpenDecoder *self, const struct file_fixed *f, PyObject *path) {
    if (flag_names(self, f->oflags) < 0)
        return NULL;
    static const int keys[] = {S_PATH, S_FLAGS, S_WRITE, S_MODE};
    int created = (f->oflags & self->o_creat) != 0;
    PyObject *values[] = {Py_NewRef(path), Py_NewRef(self->last_flag_names), Py_NewRef(self->last_write),
                          created ? PyLong_FromUnsignedLong(f->mode & 07777) : NULL};
    return dict_of(created ? 4 : 3, keys, values);
}

/* One open record -> a new Event; NULL with no error set: not ours (the fallback decodes it). */
static PyObject *decode_open(OpenDecoder *self, const char *buf, Py_ssize_t size, int *error) {
    struct hdr h;
    struct file_fixed f;
    *error = 0;
    if (size < PATH_AT)
        return NULL;
    memcpy(&h, buf, sizeof(h));
    if ((h.kind != self->k_open && h.kind != self->k_open2) || (h.flags & self->f_denied))
        return NULL;
    memcpy(&f, buf + HDR_SIZE, sizeof(f));
    const char *raw_path = buf + PATH_AT;
    Py_ssize_t room = size - PATH_AT;
    if (room > self->path_len)
        room = self->path_len; /* a rename's second path is not an open's */
    const char *nul = memchr(raw_path, 0, room);
    Py_ssize_t path_len = nul ? nul - raw_path : room;

    PyObject *event = NULL, *path = NULL, *values[N_FIELDS] = {0};
    *error = 1;
    path = PyUnicode_DecodeUTF8(raw_path, path_len, "backslashreplace");
    if (path == NULL)
        goto fail;
    values[F_KIND] = Py_NewRef(strings[S_OPEN]);
    values[F_TIME_NS] = PyLong_FromLongLong((long long)h.ts + self->wall_offset);
    values[F_PROCESS] = process_of(self, &h);
    values[F_FILE] = file_of(self, &f, path);
    if (f.repeats) {
        static const int keys[] = {S_REPEATS};
        PyObject *v[] = {PyLong_FromUnsignedLong(f.repeats)};
        values[F_DETAIL] = dict_of(1, keys, v);
    } else {
        values[F_DETAIL] = Py_NewRef(Py_None);
    }
    if (path_len == 0 || raw_path[0] != '/') {
        static const int keys[] = {S_DFD};
        PyObject *v[] = {PyLong_FromLong(f.dfd)};
        values[F_HINTS] = dict_of(1, keys, v);
    } else {
        values[F_HINTS] = Py_NewRef(Py_None);
    }
    values[F_RESULT] = PyLong_FromLong(h.result);
    values[F_SOURCE] = Py_NewRef(strings[S_EBPF]);
    values[F_ID] = new_id(self);
    values[F_CGROUP_ID] = PyLong_FromUnsignedLongLong(h.cgroup_id);
    for (int i = 0; i < N_FIELDS; i++) {
        if (values[i] == NULL) {
            if (PyErr_Occurred())
                goto fail;
            values[i] = Py_NewRef(Py_None);
        }
    }
    event = self->event_type->tp_alloc(self->event_type, 0);
    if (event == NULL)
        goto fail;
    for (int i = 0; i < N_FIELDS; i++) {
        set_slot(event, self->offsets[i], values[i]);
        values[i] = NULL;
    }
    Py_DECREF(path);
    *error = 0;
    return event;
fail:
    Py_XDECREF(path);
    for (int i = 0; i < N_FIELDS; i++)
        Py_XDECREF(values[i]);
    return NULL;
}

PyDoc_STRVAR(decode_doc,
"decode(records, fallback) -> list of Events, in record order.\n\n"
"Open records are decoded here; every other record is passed to fallback(record), whose\n"
"result is appended unless it is None.");

static PyObject *OpenDecoder_decode(OpenDecoder *self, PyObject *args) {
    PyObject *records, *fallback;
    if (!PyArg_ParseTuple(args, "O!O:decode", &PyList_Type, &records, &fallback))
        return NULL;
    PyObject *events = PyList_New(0);
    if (events == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *event = NULL;
        int error = 0;
        if (PyBytes_Check(record))
            event = decode_open(self, PyBytes_AS_STRING(record), PyBytes_GET_SIZE(record), &error);
        if (error)
            goto fail;
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
"As monitor.sensor.ringbuf.walk: committed records from consumer up to producer, the first\n"
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

static int OpenDecoder_init(OpenDecoder *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"event_type", "wall_offset", "id_prefix", "id_counter", "open_flags",
                             "k_open", "k_open2", "f_denied", "o_creat", "path_len", NULL};
    PyObject *event_type, *id_prefix, *id_counter, *open_flags;
    long long wall_offset;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!LUOOIIIIn", kwlist, &PyType_Type, &event_type,
                                     &wall_offset, &id_prefix, &id_counter, &open_flags, &self->k_open,
                                     &self->k_open2, &self->f_denied, &self->o_creat, &self->path_len))
        return -1;
    for (int i = 0; i < N_FIELDS; i++)
        if (field_offset((PyTypeObject *)event_type, FIELD_NAMES[i], &self->offsets[i]) < 0)
            return -1;
    Py_XSETREF(self->event_type, (PyTypeObject *)Py_NewRef(event_type));
    Py_XSETREF(self->id_prefix, Py_NewRef(id_prefix));
    Py_XSETREF(self->id_counter, Py_NewRef(id_counter));
    Py_XSETREF(self->open_flags, Py_NewRef(open_flags));
    self->wall_offset = wall_offset;
    return 0;
}

static void OpenDecoder_dealloc(OpenDecoder *self) {
    Py_XDECREF(self->event_type);
    Py_XDECREF(self->id_prefix);
    Py_XDECREF(self->id_counter);
    Py_XDECREF(self->open_flags);
    Py_XDECREF(self->last_comm_text);
    Py_XDECREF(self->last_flag_names);
    Py_XDECREF(self->last_write);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef OpenDecoder_methods[] = {
    {"decode", (PyCFunction)OpenDecoder_decode, METH_VARARGS, decode_doc},
    {NULL},
};

static PyTypeObject OpenDecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monitor.sensor._fastdecode.OpenDecoder",
    .tp_basicsize = sizeof(OpenDecoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Open records -> Events (see the module's comment).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)OpenDecoder_init,
    .tp_dealloc = (destructor)OpenDecoder_dealloc,
    .tp_methods = OpenDecoder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastdecode",
    .m_doc = "The ring's hot path in C: walk (ringbuf.py), open records -> Events (decode.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastdecode(void) {
    for (int i = 0; i < N_STRINGS; i++)
        if ((strings[i] = PyUnicode_InternFromString(STRING_TEXT[i])) == NULL)
            return NULL;
    if (PyType_Ready(&OpenDecoderType) < 0)
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
        || PyModule_AddObject(m, "OpenDecoder", Py_NewRef((PyObject *)&OpenDecoderType)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
