"""Every LibreChat language through the real execute_code tool of @librechat/agents: the model
sees the program's output, the tool reports the generated file, and LibreChat's backend
downloads the bytes the program wrote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

# Each program prints "hello <lang>" and writes "from <lang>" to out_<lang>.txt in /mnt/data.
PROGRAMS = {
    "py": "open('out_py.txt','w').write('from py')\nprint('hello py')",
    "bash": "printf 'from bash' > out_bash.txt; echo hello bash",
    "js": "require('fs').writeFileSync('out_js.txt', 'from js'); console.log('hello js');",
    "ts": "import * as fs from 'fs';\nconst who: string = 'ts';\nfs.writeFileSync('out_ts.txt', 'from ' + who);\n"
          "console.log('hello ' + who);",
    "c": '#include <stdio.h>\nint main(void) { FILE *f = fopen("out_c.txt", "w"); fputs("from c", f); fclose(f);\n'
         '  puts("hello c"); return 0; }',
    "cpp": '#include <fstream>\n#include <iostream>\nint main() { std::ofstream("out_cpp.txt") << "from cpp";\n'
           '  std::cout << "hello cpp" << std::endl; }',
    "java": 'import java.nio.file.*;\npublic class Main { public static void main(String[] a) throws Exception {\n'
            '  Files.writeString(Path.of("out_java.txt"), "from java"); System.out.println("hello java"); } }',
    "php": "<?php file_put_contents('out_php.txt', 'from php'); echo \"hello php\\n\";",
    "rs": 'fn main() { std::fs::write("out_rs.txt", "from rs").unwrap(); println!("hello rs"); }',
    "go": 'package main\nimport ("fmt"; "os")\nfunc main() { os.WriteFile("out_go.txt", []byte("from go"), 0644);'
          ' fmt.Println("hello go") }',
    "d": 'import std.stdio;\nstatic import std.file;\nvoid main() { std.file.write("out_d.txt", "from d"); writeln("hello d"); }',
    "f90": "program p\n  open(10, file='out_f90.txt', status='replace', access='stream')\n"
           "  write(10) 'from f90'\n  close(10)\n  print '(a)', 'hello f90'\nend program p",
    "r": "writeLines('from r', 'out_r.txt', sep = '')\ncat('hello r\\n')",
}


@pytest.mark.parametrize("lang", sorted(PROGRAMS))
def test_each_language_through_the_real_tool(run_driver: Callable[..., dict[str, Any]], lang: str) -> None:
    out = run_driver("lang", extra_env={"E2E_LANG": lang, "E2E_CODE": PROGRAMS[lang]})
    result = out["result"]
    assert result["ok"], result.get("error")
    assert result["content"].startswith(f"stdout:\nhello {lang}\n"), result["content"]
    assert "1 persisted file(s)" in result["content"]
    files = result["artifact"]["files"]
    assert [f["name"] for f in files] == [f"out_{lang}.txt"]
    got = out["downloads"][f"out_{lang}.txt"]
    assert got["status"] == 200 and got["text"] == f"from {lang}"
    assert got["content_type"].startswith("text/plain")
