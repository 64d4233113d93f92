/* selfguard._speedups: the guard's hot paths in C, on the stable ABI (one build for CPython >= 3.9).
 *
 * Optional: the pure-Python code in _connect.py, _nonblocking.py and _fastopen.py stays
 * and is what runs without this module (SELFGUARD_SPEEDUPS=0, no compiler at install, a
 * layout check that fails). A Wrapper settles here only the outcomes where nothing is left
 * to do -- a UDP connect, a refused connect, an in-range connect whose local port is not
 * the dialled one, an outside-range connect from this namespace, a bind outside the range
 * -- and hands everything else to the Python functions it was built with:
 *   slow(wrapped, instance, args, kwargs)   before the real call: the whole Python wrapper;
 *   after(wrapped, instance, address, port, outcome, outside)   after it: a self-connect to
 *       check, an EADDRNOTAVAIL or EINPROGRESS to handle, a socket of another namespace.
 * So the C code never retries, logs or decides a policy: it only says "nothing to do" faster.
 *
 * Why it reads the socket object's memory: the stable ABI offers the socket's fd, type and
 * timeout only through method and descriptor calls (~40-80 ns each, three of them per
 * connect: most of the budget). The module finds where _socket.socket keeps them by
 * probing real sockets when it is imported, checks the finding on sockets it changes, and
 * refuses to load (ImportError, the pure-Python code runs) when anything does not match.
 */
#define Py_LIMITED_API 0x03090000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdio.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

/* Where _socket.socket keeps its fd, type and timeout (nanoseconds; negative: None, 0: non-blocking). Process-wide:
 * every interpreter's _socket.socket has the same C layout. */
static Py_ssize_t off_fd = -1, off_type = -1, off_timeout = -1;

#define FIELD(obj, off, type) (*(type *)((char *)(obj) + (off)))

enum kind { CONNECT, CONNECT_EX, BIND, GETSOCKOPT, SENDTO, SENDMSG, PASSTHROUGH, KIND_COUNT };

/* ------------------------------------------------------------------ State */

/* What the Python guard knows, mirrored by _state.sync(): read here on every call. */
typedef struct {
    PyObject_HEAD
    int on;                  /* options in force */
    int low, high;           /* the cached ephemeral range */
    int known;               /* the last range read succeeded */
    double refresh_at;       /* time.monotonic() after which the range is re-read */
    unsigned long long cookie; /* SO_NETNS_COOKIE of the cached range's namespace */
    int cookie_known;        /* 0: not read yet, or the kernel can't tell */
    unsigned long long checked; /* connects settled here after a getsockname(): stats()["checked"] */
    PyObject *socket_type;   /* this interpreter's _socket.socket */
    PyObject *delegated;     /* state.delegated.get: true while asyncio's sock_connect checks itself */
} State;

static PyMemberDef state_members[] = {
    {"on", T_INT, offsetof(State, on), 0, NULL},
    {"low", T_INT, offsetof(State, low), 0, NULL},
    {"high", T_INT, offsetof(State, high), 0, NULL},
    {"known", T_INT, offsetof(State, known), 0, NULL},
    {"refresh_at", T_DOUBLE, offsetof(State, refresh_at), 0, NULL},
    {"cookie", T_ULONGLONG, offsetof(State, cookie), 0, NULL},
    {"cookie_known", T_INT, offsetof(State, cookie_known), 0, NULL},
    {"checked", T_ULONGLONG, offsetof(State, checked), 0, NULL},
    {"delegated", T_OBJECT, offsetof(State, delegated), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *socket_type_of_this_interpreter(void) {
    PyObject *module = PyImport_ImportModule("_socket");
    if (module == NULL)
        return NULL;
    PyObject *type = PyObject_GetAttrString(module, "socket");
    Py_DECREF(module);
    return type;
}

static PyObject *state_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (!PyArg_ParseTuple(args, ":State"))
        return NULL;
    State *self = (State *)PyType_GenericAlloc(type, 0);
    if (self == NULL)
        return NULL;
    self->low = 0;
    self->high = -1; /* empty: every port is outside it, and so asked of Python */
    self->refresh_at = -1.0;
    self->socket_type = socket_type_of_this_interpreter();
    if (self->socket_type == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int state_traverse(State *self, visitproc visit, void *arg) {
    Py_VISIT(self->socket_type);
    Py_VISIT(self->delegated);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int state_clear(State *self) {
    Py_CLEAR(self->socket_type);
    Py_CLEAR(self->delegated);
    return 0;
}

static void state_dealloc(State *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    state_clear(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);
}

static PyType_Slot state_slots[] = {
    {Py_tp_doc, "The Python guard's state as the C wrappers read it (written by selfguard._state.sync())."},
    {Py_tp_new, state_new},
    {Py_tp_members, state_members},
    {Py_tp_traverse, state_traverse},
    {Py_tp_clear, state_clear},
    {Py_tp_dealloc, state_dealloc},
    {0, NULL},
};

static PyType_Spec state_spec = {
    "selfguard._speedups.State", sizeof(State), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, state_slots,
};

/* ------------------------------------------------------------------ syscalls */

static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); /* the clock time.monotonic() reads */
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* The local port of *fd*, or -1 with errno set; *family* gets the address family. */
static int local_port(int fd, int *family) {
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    if (getsockname(fd, (struct sockaddr *)&address, &length) != 0)
        return -1;
    *family = address.ss_family;
    if (address.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&address)->sin_port);
    if (address.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&address)->sin6_port);
    return 0;
}

static int read_cookie(int fd, unsigned long long *cookie) {
    uint64_t value = 0;
    socklen_t length = sizeof value;
    if (getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &value, &length) != 0 || length != sizeof value)
        return -1;
    *cookie = value;
    return 0;
}

/* ------------------------------------------------------------------ Wrapper */

typedef struct {
    PyObject_HEAD
    State *state;
    int kind;
    PyObject *slow;  /* the Python wrapper: (wrapped, instance, args, kwargs) */
    PyObject *after; /* the Python continuation: (wrapped, instance, address, port, outcome, outside) */
} Wrapper;

static PyObject *call_slow(Wrapper *self, PyObject *wrapped, PyObject *instance, PyObject *args, PyObject *kwargs) {
    return PyObject_CallFunctionObjArgs(self->slow, wrapped, instance, args, kwargs, NULL);
}

static PyObject *call_after(Wrapper *self, PyObject *wrapped, PyObject *instance, PyObject *address, long port,
                            PyObject *outcome, int outside) {
    PyObject *number = PyLong_FromLong(port);
    if (number == NULL)
        return NULL;
    PyObject *result = PyObject_CallFunctionObjArgs(self->after, wrapped, instance, address, number, outcome,
                                                    outside ? Py_True : Py_False, NULL);
    Py_DECREF(number);
    return result;
}

/* The calls of the real method below pass wrapt's own args tuple, (address,) once checked:
 * no tuple is built, as in a bare passthrough. */

/* The dialled port of a plain (host, int) address, or 0 when the address is any other form. */
static long plain_port(PyObject *address) {
    if (!PyTuple_CheckExact(address) || PyTuple_Size(address) < 2)
        return 0;
    PyObject *port = PyTuple_GetItem(address, 1);
    if (port == NULL || !PyLong_CheckExact(port))
        return 0;
    long value = PyLong_AsLong(port);
    if (value == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return value > 0 && value <= 65535 ? value : 0;
}

/* Whether asyncio's sock_connect wrapper is checking the connect it makes itself (state.delegated):
 * then the socket-level wrappers stand back and pass through. 0 when unknown. */
static int delegated(State *state) {
    if (state->delegated == NULL || state->delegated == Py_None)
        return 0;
    PyObject *flag = PyObject_CallFunctionObjArgs(state->delegated, NULL);
    if (flag == NULL) {
        PyErr_Clear();
        return 0;
    }
    int set = flag == Py_True;
    Py_DECREF(flag);
    return set;
}

static int is_plain_socket(State *state, PyObject *instance) {
    return PyObject_TypeCheck(instance, (PyTypeObject *)state->socket_type);
}

/* The exception the real connect raised is one to hand back untouched (anything but
 * EADDRNOTAVAIL and EINPROGRESS, which Python handles). Leaves the exception set. */
static int raised_nothing_to_do(void) {
    if (PyErr_ExceptionMatches(PyExc_ConnectionRefusedError))
        return 1; /* the reconnect loop's error: no attribute to read */
    if (!PyErr_ExceptionMatches(PyExc_OSError))
        return 1;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    int number = -1;
    PyObject *code = value == NULL ? NULL : PyObject_GetAttrString(value, "errno");
    if (code == NULL)
        PyErr_Clear();
    else {
        if (PyLong_Check(code))
            number = (int)PyLong_AsLong(code);
        Py_DECREF(code);
        if (PyErr_Occurred())
            PyErr_Clear();
    }
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    PyErr_Restore(type, value, traceback);
    return number != EADDRNOTAVAIL && number != EINPROGRESS;
}

static PyObject *take_exception(void) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}

static PyObject *connect_call(Wrapper *self, PyObject *wrapped, PyObject *instance, PyObject *args, PyObject *kwargs) {
    State *state = self->state;
    int returns_code = self->kind == CONNECT_EX;
    if (!state->on || PyDict_Size(kwargs) != 0 || PyTuple_Size(args) != 1)
        return PyObject_Call(wrapped, args, kwargs);
    if (!is_plain_socket(state, instance))
        return call_slow(self, wrapped, instance, args, kwargs); /* gevent's class, or no socket */
    PyObject *address = PyTuple_GetItem(args, 0);
    if (FIELD(instance, off_type, int) != SOCK_STREAM)
        return PyObject_Call(wrapped, args, NULL);
    long port = plain_port(address);
    if (port == 0) {
        if (PyUnicode_Check(address) || PyBytes_Check(address))
            return PyObject_Call(wrapped, args, NULL); /* AF_UNIX: no port */
        return call_slow(self, wrapped, instance, args, kwargs);
    }
    if (FIELD(instance, off_timeout, int64_t) == 0) {
        /* Non-blocking: asyncio's sock_connect checks it itself; any other is marked by Python,
         * to be checked at completion. */
        if (delegated(state))
            return PyObject_Call(wrapped, args, NULL);
        return call_slow(self, wrapped, instance, args, kwargs);
    }
    int outside = port < state->low || port > state->high;
    if (outside && (!state->known || !state->cookie_known || monotonic() > state->refresh_at))
        return call_slow(self, wrapped, instance, args, kwargs); /* the range is Python's to read */

    PyObject *result = PyObject_Call(wrapped, args, NULL);
    if (result == NULL) {
        if (outside || raised_nothing_to_do())
            return NULL;
        PyObject *error = take_exception();
        if (error == NULL)
            return NULL;
        PyObject *handled = call_after(self, wrapped, instance, address, port, error, 0);
        Py_DECREF(error);
        return handled;
    }
    if (returns_code) {
        long code = PyLong_Check(result) ? PyLong_AsLong(result) : -1;
        if (code != 0) {
            if (PyErr_Occurred())
                PyErr_Clear();
            if (outside || (code != EADDRNOTAVAIL && code != EINPROGRESS))
                return result;
            PyObject *handled = call_after(self, wrapped, instance, address, port, result, 0);
            Py_DECREF(result);
            return handled;
        }
    }
    int fd = FIELD(instance, off_fd, int);
    if (outside) {
        unsigned long long cookie;
        if (read_cookie(fd, &cookie) == 0 && cookie == state->cookie)
            return result; /* this namespace's range, which does not hold the port */
    } else {
        int family = 0;
        int local = local_port(fd, &family);
        if (local >= 0 && local != port && (family == AF_INET || family == AF_INET6)) {
            state->checked++;
            return result; /* the kernel picked another port than the dialled one: no self-connect */
        }
    }
    PyObject *handled = call_after(self, wrapped, instance, address, port, result, outside);
    Py_DECREF(result);
    return handled;
}

static PyObject *bind_call(Wrapper *self, PyObject *wrapped, PyObject *instance, PyObject *args, PyObject *kwargs) {
    State *state = self->state;
    if (PyTuple_Size(args) != 1 || PyDict_Size(kwargs) != 0)
        return call_slow(self, wrapped, instance, args, kwargs);
    PyObject *address = PyTuple_GetItem(args, 0);
    long port = plain_port(address);
    if (port == 0 && (PyUnicode_Check(address) || PyBytes_Check(address)))
        return PyObject_Call(wrapped, args, NULL); /* AF_UNIX */
    if (port == 0 || (port >= state->low && port <= state->high) || !state->known || !state->cookie_known ||
        monotonic() > state->refresh_at)
        return call_slow(self, wrapped, instance, args, kwargs); /* port 0, other forms, or one to remember */
    /* An explicit port outside the range: the kernel never picks it, no connect to it is
     * checked, so there is nothing to remember. */
    return PyObject_Call(wrapped, args, NULL);
}

static PyObject *getsockopt_call(Wrapper *self, PyObject *wrapped, PyObject *instance, PyObject *args,
                                 PyObject *kwargs) {
    if (PyDict_Size(kwargs) != 0)
        return call_slow(self, wrapped, instance, args, kwargs);
    Py_ssize_t count = PyTuple_Size(args);
    if (count >= 2) {
        PyObject *level = PyTuple_GetItem(args, 0), *name = PyTuple_GetItem(args, 1);
        if (!PyLong_CheckExact(level) || !PyLong_CheckExact(name))
            return call_slow(self, wrapped, instance, args, kwargs); /* an int subclass, a float: compared as Python does */
        if (PyLong_AsLong(level) == SOL_SOCKET && PyLong_AsLong(name) == SO_ERROR && count <= 3 &&
            !delegated(self->state))
            return call_slow(self, wrapped, instance, args, kwargs); /* completing a non-blocking connect */
        if (PyErr_Occurred())
            PyErr_Clear();
    }
    return PyObject_Call(wrapped, args, NULL);
}

static PyObject *send_call(Wrapper *self, PyObject *wrapped, PyObject *instance, PyObject *args, PyObject *kwargs) {
    /* sendto(data, address) and sendmsg(buffers[, ancdata]) carry no flags, so no Fast Open:
     * the Python wrapper looks only at calls with the flags and an address. */
    Py_ssize_t address_at = self->kind == SENDTO ? 2 : 3;
    if (!self->state->on || PyDict_Size(kwargs) != 0 || PyTuple_Size(args) == address_at + 1)
        return call_slow(self, wrapped, instance, args, kwargs);
    return PyObject_Call(wrapped, args, NULL);
}

static PyObject *wrapper_call(Wrapper *self, PyObject *call_args, PyObject *call_kwargs) {
    if ((call_kwargs != NULL && PyDict_Size(call_kwargs) != 0) || PyTuple_Size(call_args) != 4) {
        PyErr_SetString(PyExc_TypeError, "a selfguard wrapper takes 4 positional arguments (wrapped, instance, args, kwargs)");
        return NULL;
    }
    PyObject *wrapped = PyTuple_GetItem(call_args, 0), *instance = PyTuple_GetItem(call_args, 1);
    PyObject *args = PyTuple_GetItem(call_args, 2), *kwargs = PyTuple_GetItem(call_args, 3);
    /* wrapt always gives a tuple and a dict; anything else is the Python wrapper's to take. */
    if (!PyTuple_Check(args) || !PyDict_Check(kwargs)) {
        if (self->kind != PASSTHROUGH)
            return call_slow(self, wrapped, instance, args, kwargs);
        PyErr_SetString(PyExc_TypeError, "args must be a tuple and kwargs a dict");
        return NULL;
    }
    switch (self->kind) {
    case CONNECT:
    case CONNECT_EX:
        return connect_call(self, wrapped, instance, args, kwargs);
    case BIND:
        return bind_call(self, wrapped, instance, args, kwargs);
    case GETSOCKOPT:
        return getsockopt_call(self, wrapped, instance, args, kwargs);
    case SENDTO:
    case SENDMSG:
        return send_call(self, wrapped, instance, args, kwargs);
    default:
        return PyObject_Call(wrapped, args, kwargs);
    }
}

static PyObject *wrapper_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"state", "kind", "slow", "after", NULL};
    PyObject *state, *slow = Py_None, *after = Py_None;
    int kind;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oi|OO:Wrapper", names, &state, &kind, &slow, &after))
        return NULL;
    if (kind < 0 || kind >= KIND_COUNT) {
        PyErr_SetString(PyExc_ValueError, "unknown wrapper kind");
        return NULL;
    }
    PyObject *module_state_type = PyObject_GetAttrString((PyObject *)type, "_state_type");
    if (module_state_type == NULL)
        return NULL;
    int ok = PyObject_TypeCheck(state, (PyTypeObject *)module_state_type);
    Py_DECREF(module_state_type);
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "state must be a selfguard._speedups.State");
        return NULL;
    }
    if (kind != PASSTHROUGH && (!PyCallable_Check(slow) || (kind <= CONNECT_EX && !PyCallable_Check(after)))) {
        PyErr_SetString(PyExc_TypeError, "slow (and, for connects, after) must be callable");
        return NULL;
    }
    Wrapper *self = (Wrapper *)PyType_GenericAlloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(state);
    self->state = (State *)state;
    self->kind = kind;
    Py_INCREF(slow);
    self->slow = slow;
    Py_INCREF(after);
    self->after = after;
    return (PyObject *)self;
}

static int wrapper_traverse(Wrapper *self, visitproc visit, void *arg) {
    Py_VISIT(self->state);
    Py_VISIT(self->slow);
    Py_VISIT(self->after);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int wrapper_clear(Wrapper *self) {
    Py_CLEAR(self->state);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->after);
    return 0;
}

static void wrapper_dealloc(Wrapper *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    wrapper_clear(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);
}

static PyMemberDef wrapper_members[] = {
    {"slow", T_OBJECT, offsetof(Wrapper, slow), READONLY, NULL},
    {"kind", T_INT, offsetof(Wrapper, kind), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot wrapper_slots[] = {
    {Py_tp_doc, "A wrapt wrapper (wrapped, instance, args, kwargs) that settles the common cases in C."},
    {Py_tp_new, wrapper_new},
    {Py_tp_call, wrapper_call},
    {Py_tp_members, wrapper_members},
    {Py_tp_traverse, wrapper_traverse},
    {Py_tp_clear, wrapper_clear},
    {Py_tp_dealloc, wrapper_dealloc},
    {0, NULL},
};

static PyType_Spec wrapper_spec = {
    "selfguard._speedups.Wrapper", sizeof(Wrapper), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, wrapper_slots,
};

/* ------------------------------------------------------------------ functions */

static int fd_argument(PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a file descriptor must be a non-negative int");
        return -1;
    }
    return (int)fd;
}

static PyObject *sockname_port(PyObject *module, PyObject *arg) {
    int fd = fd_argument(arg), family = 0;
    if (fd < 0)
        return NULL;
    int port = local_port(fd, &family);
    if (port < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(port);
}

static PyObject *netns_cookie(PyObject *module, PyObject *arg) {
    int fd = fd_argument(arg);
    unsigned long long cookie;
    if (fd < 0)
        return NULL;
    if (read_cookie(fd, &cookie) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromUnsignedLongLong(cookie);
}

static PyObject *disconnect(PyObject *module, PyObject *arg) {
    /* connect() with an AF_UNSPEC address: Linux runs tcp_disconnect() (RST, the port
     * released, the fd and its options kept). A raw syscall: a wrapper of libc's connect
     * (an LD_PRELOAD library, the native guard) has no business here. */
    int fd = fd_argument(arg);
    if (fd < 0)
        return NULL;
    struct sockaddr unspec;
    memset(&unspec, 0, sizeof unspec);
    unspec.sa_family = AF_UNSPEC;
    long done;
    Py_BEGIN_ALLOW_THREADS
    done = syscall(SYS_connect, fd, &unspec, (socklen_t)sizeof unspec);
    Py_END_ALLOW_THREADS
    if (done != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef functions[] = {
    {"sockname_port", sockname_port, METH_O, "sockname_port(fd) -> the local port (getsockname(), no tuple made)"},
    {"netns_cookie", netns_cookie, METH_O, "netns_cookie(fd) -> getsockopt(SOL_SOCKET, SO_NETNS_COOKIE) as an int"},
    {"disconnect", disconnect, METH_O, "disconnect(fd): connect(fd, AF_UNSPEC): reset a TCP socket in place"},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------ the layout probe */

static long call_long(PyObject *object, const char *method) {
    PyObject *value = PyObject_CallMethod(object, method, NULL);
    if (value == NULL)
        return -2;
    long result = PyLong_AsLong(value);
    Py_DECREF(value);
    return result;
}

static int set_timeout(PyObject *sock, PyObject *value) {
    PyObject *done = PyObject_CallMethod(sock, "settimeout", "O", value);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* Find, in two real sockets of different families, types and fds, where the fd, the type
 * and the timeout are; then change the timeouts and check they move where found. */
static int probe_layout(PyObject *socket_type, Py_ssize_t basicsize) {
    PyObject *a = PyObject_CallFunction(socket_type, "ii", AF_INET, SOCK_STREAM);
    PyObject *b = a == NULL ? NULL : PyObject_CallFunction(socket_type, "ii", AF_UNIX, SOCK_DGRAM);
    int found = -1;
    if (a == NULL || b == NULL)
        goto done;
    long fd_a = call_long(a, "fileno"), fd_b = call_long(b, "fileno");
    if (fd_a < 0 || fd_b < 0 || fd_a == fd_b)
        goto done;
    Py_ssize_t start = (Py_ssize_t)sizeof(PyObject);
    for (Py_ssize_t off = start; off + 12 <= basicsize && off < 128; off += 4) {
        if (FIELD(a, off, int) == fd_a && FIELD(b, off, int) == fd_b && FIELD(a, off + 4, int) == AF_INET &&
            FIELD(b, off + 4, int) == AF_UNIX && FIELD(a, off + 8, int) == SOCK_STREAM &&
            FIELD(b, off + 8, int) == SOCK_DGRAM) {
            off_fd = off;
            off_type = off + 8;
            break;
        }
    }
    if (off_fd < 0)
        goto done;
    PyObject *two_and_a_half = PyFloat_FromDouble(2.5);
    int set = two_and_a_half != NULL && set_timeout(a, two_and_a_half) == 0 && set_timeout(b, Py_None) == 0;
    Py_XDECREF(two_and_a_half);
    if (!set)
        goto done;
    for (Py_ssize_t off = (off_type + 4 + 7) / 8 * 8; off + 8 <= basicsize && off < 160; off += 8) {
        /* None is kept as a negative number (-1 s in nanoseconds, in CPython 3.9-3.14). */
        if (FIELD(a, off, int64_t) == 2500000000LL && FIELD(b, off, int64_t) < 0) {
            off_timeout = off;
            break;
        }
    }
    if (off_timeout < 0)
        goto done;
    PyObject *zero = PyFloat_FromDouble(0.0);
    set = zero != NULL && set_timeout(a, zero) == 0;
    Py_XDECREF(zero);
    if (!set || FIELD(a, off_timeout, int64_t) != 0 || set_timeout(a, Py_None) != 0 ||
        FIELD(a, off_timeout, int64_t) != FIELD(b, off_timeout, int64_t))
        goto done;
    found = 0;
done:
    if (a != NULL)
        Py_XDECREF(PyObject_CallMethod(a, "close", NULL));
    if (b != NULL)
        Py_XDECREF(PyObject_CallMethod(b, "close", NULL));
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (PyErr_Occurred())
        return -1;
    if (found != 0) {
        off_fd = off_type = off_timeout = -1;
        PyErr_SetString(PyExc_ImportError, "selfguard._speedups: _socket.socket's layout is not the one expected");
    }
    return found;
}

static int exec_module(PyObject *module) {
    if (off_fd < 0) {
        PyObject *socket_type = socket_type_of_this_interpreter();
        if (socket_type == NULL)
            return -1;
        PyObject *size = PyObject_GetAttrString(socket_type, "__basicsize__");
        Py_ssize_t basicsize = size == NULL ? -1 : PyLong_AsSsize_t(size);
        Py_XDECREF(size);
        int probed = basicsize < 0 ? -1 : probe_layout(socket_type, basicsize);
        Py_DECREF(socket_type);
        if (probed != 0)
            return -1;
    }
    PyObject *state_type = PyType_FromSpec(&state_spec);
    if (state_type == NULL)
        return -1;
    PyObject *wrapper_type = PyType_FromSpec(&wrapper_spec);
    if (wrapper_type == NULL || PyObject_SetAttrString(wrapper_type, "_state_type", state_type) != 0 ||
        PyModule_AddObject(module, "State", state_type) != 0) {
        Py_XDECREF(wrapper_type);
        Py_DECREF(state_type);
        return -1;
    }
    if (PyModule_AddObject(module, "Wrapper", wrapper_type) != 0) {
        Py_DECREF(wrapper_type);
        return -1;
    }
    /* The benchmark's floor "built the same way": a C wrapper that only passes through. */
    PyObject *empty = PyTuple_New(0);
    PyObject *state = empty == NULL ? NULL : PyObject_Call(state_type, empty, NULL);
    Py_XDECREF(empty);
    PyObject *passthrough = state == NULL ? NULL : PyObject_CallFunction(wrapper_type, "Oi", state, PASSTHROUGH);
    Py_XDECREF(state);
    if (passthrough == NULL || PyModule_AddObject(module, "passthrough", passthrough) != 0) {
        Py_XDECREF(passthrough);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "CONNECT", CONNECT) || PyModule_AddIntConstant(module, "CONNECT_EX", CONNECT_EX) ||
        PyModule_AddIntConstant(module, "BIND", BIND) || PyModule_AddIntConstant(module, "GETSOCKOPT", GETSOCKOPT) ||
        PyModule_AddIntConstant(module, "SENDTO", SENDTO) || PyModule_AddIntConstant(module, "SENDMSG", SENDMSG) ||
        PyModule_AddIntConstant(module, "PASSTHROUGH", PASSTHROUGH))
        return -1;
    return 0;
}

/* Isolated subinterpreters (3.12+, each with its own GIL) load only a module that says it
 * supports them, with the slot Py_mod_multiple_interpreters (3) and the value
 * Py_MOD_PER_INTERPRETER_GIL_SUPPORTED (2). Built for 3.9's stable ABI, this module can't
 * name them, and 3.9-3.11 refuse an unknown slot: so it says so where the running
 * interpreter knows the slot. It keeps no Python object outside its module's types and
 * objects; the layout offsets are process-wide constants (a second interpreter probing at
 * the same time writes the same values). */
#define MULTIPLE_INTERPRETERS_SLOT 3
#define PER_INTERPRETER_GIL_SUPPORTED ((void *)2)

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, exec_module},
    {MULTIPLE_INTERPRETERS_SLOT, PER_INTERPRETER_GIL_SUPPORTED},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "selfguard._speedups",
    "selfguard's hot paths in C (optional; the pure-Python code is the fallback).",
    0, functions, module_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    int major = 0, minor = 0;
    if (sscanf(Py_GetVersion(), "%d.%d", &major, &minor) != 2 || major < 3 || (major == 3 && minor < 12))
        module_slots[1] = module_slots[2]; /* before 3.12: no such slot, and no own-GIL subinterpreters */
    return PyModuleDef_Init(&module_def);
}
