/* A personal notebook on engram: teach it notes, ask about them, export what it learned.
 *
 *   gcc notebook.c -I ffi/c/include -L target/release -lengram_c -o notebook
 *   ./notebook MODEL STORE add "My sister Ana lives in Porto." \
 *       ask "Where does my sister Ana live?" export notes.delta
 *
 * Commands run in order: add NOTE, ask QUESTION, export DELTA, import DELTA. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "engram.h"

static bool print_step(uint32_t fact, uint32_t step, double loss, void *user_data) {
    (void)fact;
    (void)user_data;
    printf("  step %u: loss %.3f\n", step, loss);
    fflush(stdout);
    return true;
}

static int fail(const char *what) {
    fprintf(stderr, "notebook: %s: %s\n", what, engram_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc % 2 == 0) {
        fprintf(stderr, "usage: %s MODEL STORE (add NOTE | ask QUESTION | export DELTA | import DELTA)...\n",
                argv[0]);
        return 2;
    }
    EngramEngine *notebook = NULL;
    if (engram_open(argv[1], argv[2], true, 0, &notebook) != ENGRAM_STATUS_OK)
        return fail("open");
    int status = 0;
    for (int i = 3; i + 1 < argc && status == 0; i += 2) {
        const char *command = argv[i], *arg = argv[i + 1];
        if (strcmp(command, "add") == 0) {
            printf("learning: %s\n", arg);
            if (engram_learn_note(notebook, arg, 0, print_step, NULL) != ENGRAM_STATUS_OK)
                status = fail("add");
        } else if (strcmp(command, "ask") == 0) {
            char *answer = NULL;
            if (engram_ask(notebook, arg, 48, &answer) != ENGRAM_STATUS_OK) {
                status = fail("ask");
            } else {
                printf("Q: %s\nA: %s\n", arg, answer);
                engram_string_free(answer);
            }
        } else if (strcmp(command, "export") == 0) {
            char *id = NULL;
            if (engram_delta_export(notebook, NULL, false, "notebook", arg, &id) != ENGRAM_STATUS_OK) {
                status = fail("export");
            } else {
                printf("exported delta %s to %s\n", id, arg);
                engram_string_free(id);
            }
        } else if (strcmp(command, "import") == 0) {
            if (engram_delta_import(notebook, arg, NULL) != ENGRAM_STATUS_OK)
                status = fail("import");
            else
                printf("imported %s\n", arg);
        } else {
            fprintf(stderr, "notebook: unknown command %s\n", command);
            status = 2;
        }
    }
    engram_close(notebook);
    return status;
}
