"""Real-jail tier: every LibreChat language, through the HTTP API.

For each of the 13 languages: a hello world whose arguments must arrive verbatim; an uploaded
input file read from /mnt/data and an output file that comes back in `files`; a compile or
run-time error reported as a normal 200 answer; a memory bomb reported as status "oom".
Compiled languages compile and run in the same jail, so their cases also prove that the
compiler works inside it and leaves nothing among the user's files."""

from __future__ import annotations

from typing import Any, NamedTuple

import aiohttp
import msgspec
import pytest

from sandboxd.languages import KNOWN_LANGS, RECIPES
from sandboxd.policy import Policy
from sandboxd.settings import MiB
from tests.conftest import JAIL_CONFIGS

pytestmark = pytest.mark.jail

# A space, a shell variable, a glob and an option: none may be split, expanded or taken by the
# runtime (node, tsx, Rscript, php, java, the compile-and-run shell) on the way to argv.
ARGS = ["a", "b c", "$HOME", "*", "--version"]
HELLO_OUT = "hello a|b c|$HOME|*|--version\n"
INPUT = b"3\n4\n5\n"
RESULT = b"sum=12\n"
# Small enough to hit quickly, large enough for every compiler; recipe floors raise it.
OOM_LIMIT = 256 * MiB
OOM_MARKER = "allocating"
GiB = 1024 * MiB


class Case(NamedTuple):
    hello: str  # prints HELLO_OUT for ARGS
    io: str  # reads input.txt (numbers), writes result.txt ("sum=N")
    error: str  # fails to compile or at run time, naming undefined_thing
    oom: str  # prints OOM_MARKER (flushed), then allocates and touches memory without end


CASES: dict[str, Case] = {
    "py": Case(
        hello='import sys\nprint("hello " + "|".join(sys.argv[1:]))\n',
        io='nums = [int(x) for x in open("input.txt").read().split()]\n'
           'open("result.txt", "w").write(f"sum={sum(nums)}\\n")\n',
        error="undefined_thing()\n",
        oom='print("allocating")\nchunks = []\nwhile True:\n    chunks.append(b"x" * (16 << 20))\n',
    ),
    "bash": Case(
        hello='IFS="|"\necho "hello $*"\n',
        io='sum=0\nwhile read -r n; do sum=$((sum + n)); done < input.txt\necho "sum=$sum" > result.txt\n',
        error="undefined_thing\n",
        oom='echo allocating\na=x\nwhile true; do a="$a$a"; done\n',
    ),
    "js": Case(
        hello='console.log("hello " + process.argv.slice(2).join("|"));\n',
        io='const fs = require("fs");\n'
           'const nums = fs.readFileSync("input.txt", "utf8").trim().split("\\n").map(Number);\n'
           'fs.writeFileSync("result.txt", `sum=${nums.reduce((a, b) => a + b, 0)}\\n`);\n',
        error="undefined_thing();\n",
        oom='console.log("allocating");\nconst keep = [];\nwhile (true) keep.push(Buffer.alloc(16 << 20, 1));\n',
    ),
    "ts": Case(
        hello="interface Greeting { words: string[] }\n"
              "const g: Greeting = { words: process.argv.slice(2) };\n"
              'console.log(`hello ${g.words.join("|")}`);\n',
        io='import * as fs from "fs";\n'
           'const nums: number[] = fs.readFileSync("input.txt", "utf8").trim().split("\\n").map(Number);\n'
           "const total: number = nums.reduce((a, b) => a + b, 0);\n"
           'fs.writeFileSync("result.txt", `sum=${total}\\n`);\n',
        # tsx strips types without checking them: the error surfaces at run time.
        error="const n: number = 1;\nundefined_thing(n);\n",
        oom='console.log("allocating");\nconst keep: Buffer[] = [];\n'
            "while (true) keep.push(Buffer.alloc(16 << 20, 1));\n",
    ),
    "c": Case(
        hello="""#include <stdio.h>
int main(int argc, char **argv) {
    printf("hello ");
    for (int i = 1; i < argc; i++) printf("%s%s", i > 1 ? "|" : "", argv[i]);
    printf("\\n");
    return 0;
}
""",
        io="""#include <stdio.h>
int main(void) {
    FILE *in = fopen("input.txt", "r"), *out = fopen("result.txt", "w");
    long n, sum = 0;
    if (!in || !out) return 2;
    while (fscanf(in, "%ld", &n) == 1) sum += n;
    fprintf(out, "sum=%ld\\n", sum);
    return fclose(out) != 0;
}
""",
        error="int main(void) { return undefined_thing; }\n",
        # Volatile stores: the optimizer may not drop memory that is never read.
        oom="""#include <stdio.h>
#include <stdlib.h>
int main(void) {
    size_t n = (size_t)2 << 30;
    volatile char *p = malloc(n);
    puts("allocating");
    fflush(stdout);
    if (!p) return 3;
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    return p[0] == 1;
}
""",
    ),
    "cpp": Case(
        hello="""#include <iostream>
#include <string>
int main(int argc, char **argv) {
    std::string line = "hello ";
    for (int i = 1; i < argc; i++) line += (i > 1 ? "|" : "") + std::string(argv[i]);
    std::cout << line << "\\n";
}
""",
        io="""#include <fstream>
#include <numeric>
#include <vector>
int main() {
    std::ifstream in("input.txt");
    std::vector<long> nums;
    for (long n; in >> n;) nums.push_back(n);
    std::ofstream("result.txt") << "sum=" << std::accumulate(nums.begin(), nums.end(), 0L) << "\\n";
}
""",
        error="int main() { return undefined_thing(); }\n",
        oom="""#include <cstddef>
#include <iostream>
#include <vector>
int main() {
    std::cout << "allocating" << std::endl;
    std::vector<char *> keep;
    for (;;) {
        char *p = new char[16 << 20];
        for (std::size_t i = 0; i < (16 << 20); i += 4096) static_cast<volatile char *>(p)[i] = 1;
        keep.push_back(p);
    }
}
""",
    ),
    "rs": Case(
        hello="""fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("hello {}", args.join("|"));
}
""",
        io="""use std::fs;
fn main() {
    let text = fs::read_to_string("input.txt").expect("read input");
    let sum: i64 = text.split_whitespace().map(|n| n.parse::<i64>().unwrap()).sum();
    fs::write("result.txt", format!("sum={}\\n", sum)).expect("write result");
}
""",
        error="fn main() {\n    undefined_thing();\n}\n",
        oom="""fn main() {
    println!("allocating");
    let mut keep: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 16 << 20];
        for i in (0..chunk.len()).step_by(4096) {
            unsafe { std::ptr::write_volatile(&mut chunk[i], 1) };
        }
        keep.push(chunk);
    }
}
""",
    ),
    "go": Case(
        hello="""package main

import (
\t"fmt"
\t"os"
\t"strings"
)

func main() { fmt.Println("hello " + strings.Join(os.Args[1:], "|")) }
""",
        io="""package main

import (
\t"fmt"
\t"os"
\t"strconv"
\t"strings"
)

func main() {
\tdata, err := os.ReadFile("input.txt")
\tif err != nil {
\t\tpanic(err)
\t}
\tsum := 0
\tfor _, f := range strings.Fields(string(data)) {
\t\tn, err := strconv.Atoi(f)
\t\tif err != nil {
\t\t\tpanic(err)
\t\t}
\t\tsum += n
\t}
\tif err := os.WriteFile("result.txt", []byte(fmt.Sprintf("sum=%d\\n", sum)), 0o644); err != nil {
\t\tpanic(err)
\t}
}
""",
        error="package main\n\nfunc main() { undefined_thing() }\n",
        oom="""package main

import "fmt"

func main() {
\tfmt.Println("allocating")
\tvar keep [][]byte
\tfor {
\t\tb := make([]byte, 16<<20)
\t\tfor i := 0; i < len(b); i += 4096 {
\t\t\tb[i] = 1
\t\t}
\t\tkeep = append(keep, b)
\t}
}
""",
    ),
    "d": Case(
        hello="""import std.array : join;
import std.stdio : writeln;

void main(string[] args) { writeln("hello ", args[1 .. $].join("|")); }
""",
        io="""import std.algorithm : map, sum;
import std.array : split;
import std.conv : to;
import std.file : readText, write;
import std.format : format;

void main() {
    auto total = readText("input.txt").split.map!(to!long).sum;
    write("result.txt", format("sum=%d\\n", total));
}
""",
        error="void main() { undefined_thing(); }\n",
        oom="""import std.stdio : stdout, writeln;

void main() {
    writeln("allocating");
    stdout.flush();
    ubyte[][] keep;
    while (true) {
        auto chunk = new ubyte[16 << 20];
        chunk[] = 1;
        keep ~= chunk;
    }
}
""",
    ),
    "f90": Case(
        hello="""program hello
  implicit none
  integer :: i
  character(len=256) :: arg
  character(len=:), allocatable :: line
  line = 'hello '
  do i = 1, command_argument_count()
    call get_command_argument(i, arg)
    if (i > 1) line = line // '|'
    line = line // trim(arg)
  end do
  print '(a)', line
end program hello
""",
        io="""program io
  implicit none
  integer :: n, total, ios
  total = 0
  open(10, file='input.txt', status='old', action='read')
  do
    read(10, *, iostat=ios) n
    if (ios /= 0) exit
    total = total + n
  end do
  close(10)
  open(11, file='result.txt', status='replace', action='write')
  write(11, '(a,i0)') 'sum=', total
  close(11)
end program io
""",
        error="program broken\n  implicit none\n  undefined_thing = 1\nend program broken\n",
        oom="""program oom
  use iso_fortran_env, only: output_unit
  implicit none
  integer(kind=8) :: i, n
  integer(kind=1), allocatable :: a(:)
  print '(a)', 'allocating'
  flush(output_unit)
  n = 2_8 * 1024 * 1024 * 1024
  allocate(a(n))
  do i = 1, n, 4096
    a(i) = 1
  end do
  print *, sum(a)
end program oom
""",
    ),
    "java": Case(
        hello="""public class Main {
    public static void main(String[] args) {
        System.out.println("hello " + String.join("|", args));
    }
}
""",
        io="""import java.nio.file.Files;
import java.nio.file.Path;

public class Main {
    public static void main(String[] args) throws Exception {
        long sum = 0;
        for (String line : Files.readAllLines(Path.of("input.txt"))) {
            if (!line.isBlank()) sum += Long.parseLong(line.trim());
        }
        Files.writeString(Path.of("result.txt"), "sum=" + sum + "\\n");
    }
}
""",
        error="public class Main {\n    public static void main(String[] args) {\n        undefined_thing();\n    }\n}\n",
        # The heap is capped below the cgroup limit (an OutOfMemoryError, see the test below):
        # native memory is what a cgroup kill looks like for the JVM.
        oom="""import java.lang.reflect.Field;
import sun.misc.Unsafe;

public class Main {
    public static void main(String[] args) throws Exception {
        System.out.println("allocating");
        System.out.flush();
        Field f = Unsafe.class.getDeclaredField("theUnsafe");
        f.setAccessible(true);
        Unsafe unsafe = (Unsafe) f.get(null);
        long chunk = 64L << 20;
        while (true) {
            long p = unsafe.allocateMemory(chunk);
            unsafe.setMemory(p, chunk, (byte) 1);
        }
    }
}
""",
    ),
    "php": Case(
        hello='<?php\necho "hello " . implode("|", array_slice($argv, 1)) . "\\n";\n',
        io='<?php\n$nums = array_map("intval", file("input.txt", FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES));\n'
           'file_put_contents("result.txt", "sum=" . array_sum($nums) . "\\n");\n',
        error="<?php\nundefined_thing();\n",
        oom='<?php\necho "allocating\\n";\n$keep = [];\nwhile (true) {\n    $keep[] = str_repeat("x", 16 << 20);\n}\n',
    ),
    "r": Case(
        hello='args <- commandArgs(trailingOnly = TRUE)\ncat("hello ", paste(args, collapse = "|"), "\\n", sep = "")\n',
        io='nums <- scan("input.txt", quiet = TRUE)\nwriteLines(sprintf("sum=%d", as.integer(sum(nums))), "result.txt")\n',
        error="undefined_thing()\n",
        oom='cat("allocating\\n")\nflush(stdout())\nkeep <- list()\n'
            "repeat {\n  keep[[length(keep) + 1]] <- rep(1, 2e6)\n}\n",
    ),
}
LANGS = sorted(CASES)


async def run(client: Any, code: str, lang: str, **extra: Any) -> dict[str, Any]:
    resp = await client.post("/exec", json={"lang": lang, "code": code, **extra})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def upload(client: Any, name: str, data: bytes) -> dict[str, str]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    resp = await client.post("/upload", data=form)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return {"id": body["files"][0]["fileId"], "name": name, "session_id": body["session_id"]}


def test_every_librechat_language_has_a_recipe_and_cases() -> None:
    assert set(KNOWN_LANGS) == set(RECIPES) == set(CASES)


@pytest.mark.parametrize("profile", sorted({r.profile for r in RECIPES.values()}))
def test_every_language_profile_passes_the_policy_checks(profile: str) -> None:
    policy = Policy(str(JAIL_CONFIGS), "/bin/true")
    msg = policy.check_profile(profile)
    policy.check_submounts(profile)
    assert msg["name"] == [profile]


@pytest.mark.parametrize("lang", LANGS)
async def test_hello_world_receives_its_arguments(client: Any, lang: str) -> None:
    body = await run(client, CASES[lang].hello, lang, args=ARGS)
    assert body["status"] == "ok", body["stderr"]
    assert body["stdout"] == HELLO_OUT and body["exit_code"] == 0
    # Sources, binaries, build and font caches stay on the jail's /tmp, never among the user's files.
    assert body["files"] == []


@pytest.mark.parametrize("lang", LANGS)
async def test_reads_an_uploaded_file_and_writes_one_back(client: Any, lang: str) -> None:
    ref = await upload(client, "input.txt", INPUT)
    body = await run(client, CASES[lang].io, lang, files=[ref])
    assert body["status"] == "ok", body["stderr"]
    out = {f["name"]: f for f in body["files"]}
    assert set(out) == {"input.txt", "result.txt"}
    assert out["input.txt"]["id"] == ref["id"] and out["input.txt"]["inherited"] is True
    result = out["result.txt"]
    assert not result.get("inherited")
    data = await (await client.get(f"/download/{result['storage_session_id']}/{result['id']}")).read()
    assert data == RESULT


@pytest.mark.parametrize("lang", LANGS)
async def test_compile_or_runtime_error_is_200_with_stderr(client: Any, lang: str) -> None:
    body = await run(client, CASES[lang].error, lang)
    assert body["status"] == "error" and body["exit_code"] != 0, body
    assert "undefined_thing" in body["stderr"]
    assert body["stdout"] == ""


@pytest.mark.parametrize("lang", LANGS)
async def test_memory_bomb_is_oom_with_the_limit_named(make_client: Any, lang: str) -> None:
    client = await make_client(limits={"memory_max_bytes": OOM_LIMIT})
    limit = max(OOM_LIMIT, RECIPES[lang].memory_max_bytes or 0)  # a runtime's floor wins
    body = await run(client, CASES[lang].oom, lang)
    # The marker proves the program ran: the kill is not the compiler's.
    assert body["stdout"].startswith(OOM_MARKER + "\n"), body
    assert body["status"] == "oom", body
    named = f"{limit // GiB} GiB" if limit % GiB == 0 else f"{limit // MiB} MiB"
    assert f"memory limit {named} exceeded" in body["message"]
    assert body["memory_peak_bytes"] >= limit * 0.9


async def test_r_plots_to_png_headless(client: Any) -> None:
    code = 'png("plot.png", width = 400, height = 300)\nplot(1:10, main = "t")\ninvisible(dev.off())\n'
    body = await run(client, code, "r")
    assert body["status"] == "ok", body["stderr"]
    (png,) = [f for f in body["files"] if f["name"] == "plot.png"]
    assert png["type"] == "image/png"
    data = await (await client.get(f"/download/{body['session_id']}/{png['id']}")).read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [f["name"] for f in body["files"]] == ["plot.png"]  # no font cache or history beside it


@pytest.mark.parametrize("code", [
    # A helper class above the public one (the source launcher alone would run Helper).
    "class Helper { static String hi() { return \"hi\"; } }\n"
    "public class Main { public static void main(String[] a) { System.out.println(Helper.hi() + a[0]); } }\n",
    # A public class that is not called Main, after imports and a blank line.
    "import java.util.List;\n\npublic final class Solution {\n"
    "  public static void main(String[] a) { System.out.println(\"hi\" + List.of(a).get(0)); }\n}\n",
    # No public class at all.
    "class Main { public static void main(String[] a) { System.out.println(\"hi\" + a[0]); } }\n",
])
async def test_java_runs_whatever_the_main_class_is_called(client: Any, code: str) -> None:
    body = await run(client, code, "java", args=["!"])
    assert body["status"] == "ok", body["stderr"]
    assert body["stdout"] == "hi!\n"


async def test_java_heap_is_sized_below_the_jail_limit(make_client: Any) -> None:
    """The JVM cannot see the cgroup limit; its heap comes from the recipe's MaxRAM, so a heap
    bomb is a catchable OutOfMemoryError, not a kill."""
    client = await make_client(limits={"memory_max_bytes": OOM_LIMIT})
    code = ("import java.util.*;\npublic class Main { public static void main(String[] a) {\n"
            "  List<long[]> keep = new ArrayList<>();\n"
            "  try { while (true) keep.add(new long[1 << 20]); }\n"
            "  catch (OutOfMemoryError e) { int n = keep.size(); keep = null; System.out.println(\"caught \" + n); }\n"
            "} }\n")
    body = await run(client, code, "java")
    assert body["status"] == "ok", body
    caught_mib = int(body["stdout"].split()[1]) * 8  # each array is 8 MiB
    floor = RECIPES["java"].memory_max_bytes or 0
    assert floor // MiB // 4 <= caught_mib < floor // MiB


async def test_missing_toolchain_is_400_naming_the_language(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = msgspec.structs.replace(RECIPES["php"], requires=("/nonexistent/bin/php",))
    monkeypatch.setitem(RECIPES, "php", gone)
    resp = await client.post("/exec", json={"lang": "php", "code": "<?php echo 1;"})
    assert resp.status == 400
    assert (await resp.json())["message"] == "Unsupported language: php (its runtime is not installed on this server)"
    twin = await run(client, CASES["js"].hello, "js", args=ARGS)  # other languages still run
    assert twin["stdout"] == HELLO_OUT


@pytest.mark.parametrize("limit_mib", [1024, 2048])
async def test_java_heap_follows_the_runs_memory_limit(make_client: Any, limit_mib: int) -> None:
    """MaxRAM is the run's own memory limit: raising the server's limit raises the heap."""
    client = await make_client(limits={"memory_max_bytes": limit_mib * MiB})
    code = ("public class Main { public static void main(String[] a) {\n"
            "  System.out.println(Runtime.getRuntime().maxMemory() / (1024 * 1024)); } }\n")
    body = await run(client, code, "java")
    assert body["status"] == "ok", body["stderr"]
    heap_mib = int(body["stdout"])
    assert limit_mib * 0.4 <= heap_mib <= limit_mib * 0.5  # MaxRAMPercentage=50 of the limit
