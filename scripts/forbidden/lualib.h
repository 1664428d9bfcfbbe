/* Stand-in found first on the include path of kernels/ and engine/:
 * these layers may not use Lua (DESIGN.md, "Folders and their rules"). */
#error "layering: <lualib.h> is for lua/ and tui/ only"
