//! A V8 build's layout, from the `v8dbg_*` symbols node exports: V8's postmortem metadata
//! (what llnode and the OpenTelemetry profiler read), whose names carry the class, field and
//! type of each offset. Where a V8 release dropped a symbol, the fallback is the offset that
//! release is known to use (as the OpenTelemetry profiler's `nodev8` does); a symbol with
//! neither is an error that says which, and that binary's frames stay native.
use std::{collections::HashMap, fs::File, ops::ControlFlow, path::Path};

use anyhow::{Context, Result, bail};
use object::{Endianness, Object, ObjectKind, ObjectSection, ReadCache, read::elf::ElfFile64};
use sockleak_common::{V8_FP_BYTECODE_OFFSET, V8_FP_CONTEXT, V8_FP_FUNCTION, V8Layout};

use crate::elf_symbols::{Table, each_defined};

/// What userspace reads of a V8 heap, beside what the kernel walk reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// V8's version, major and minor.
    pub version: (u32, u32),
    pub kernel: V8Layout,
    pub strings: Strings,
    pub types: Types,
    pub shared_name_or_scope_info: u64,
    pub shared_function_data: u64,
    pub shared_script: u64,
    pub script_name: u64,
    pub script_source: u64,
    pub fixed_array_length: u64,
    pub bytecode_array_data: u64,
    pub bytecode_array_source_positions: u64,
    /// ScopeInfo slots: the first variable, the number of context locals.
    pub scope_info_first_vars: u64,
    pub scope_info_context_locals: u64,
    /// Since V8 12.8 a ScopeInfo holds the function's start and end at fixed slots; before,
    /// they are found after the name.
    pub scope_info_fixed_positions: bool,
}

/// How V8 tells and lays out its strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strings {
    pub first_nonstring_type: u16,
    pub representation_mask: u16,
    pub encoding_mask: u16,
    pub seq_tag: u16,
    pub cons_tag: u16,
    pub thin_tag: u16,
    pub sliced_tag: u16,
    pub one_byte_tag: u16,
    pub length: u64,
    pub one_byte_chars: u64,
    pub two_byte_chars: u64,
    pub cons_first: u64,
    pub cons_second: u64,
    pub thin_actual: u64,
    pub sliced_parent: u64,
    pub sliced_offset: u64,
}

/// Instance types of the objects userspace checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Types {
    pub shared_function_info: u16,
    pub scope_info: u16,
    pub script: u16,
    pub bytecode_array: u16,
    pub byte_array: u16,
    pub fixed_array: u16,
}

const POINTER: u64 = 8;

impl Layout {
    /// The layout of the V8 inside the ELF file at `path` (node, or a `libnode.so`).
    pub fn of_binary(path: &Path) -> Result<Self> {
        if std::env::var_os(super::TEST_UNSUPPORTED).is_some() {
            bail!(
                "V8 layout reader disabled ({} is set)",
                super::TEST_UNSUPPORTED
            );
        }
        let symbols = read_symbols(path)?;
        let mut layout = Self::from_symbols(&symbols.values)?;
        if let Some(code) = symbols.native_api_call {
            layout.kernel.native_api_call = code;
        }
        Ok(layout)
    }

    /// Built from symbol values (`v8dbg_*` without the prefix, and the version's parts).
    pub fn from_symbols(symbols: &HashMap<String, i64>) -> Result<Self> {
        let get = |name: &str| symbols.get(name).copied();
        let need = |name: &str| get(name).with_context(|| format!("no v8dbg_{name} symbol"));
        let offset = |name: &str| -> Result<u64> {
            u64::try_from(need(name)?).with_context(|| format!("v8dbg_{name} is negative"))
        };
        let offset_or =
            |name: &str, fallback: u64| get(name).map_or(Ok(fallback), |_| offset(name));
        let any_of = |names: &[&str]| -> Result<u64> {
            names
                .iter()
                .find(|n| get(n).is_some())
                .map(|n| offset(n))
                .unwrap_or_else(|| bail!("no v8dbg_{} symbol", names[0]))
        };
        let ty = |name: &str| -> Result<u16> {
            u16::try_from(need(name)?).with_context(|| format!("v8dbg_{name} is not a type"))
        };
        // The walk reads a frame's slots where V8 has kept them since 8.7.
        let frame = |names: &[&str], fallback: Option<i64>, walked: i16| -> Result<()> {
            let value = names.iter().find_map(|n| get(n)).or(fallback);
            match value {
                Some(v) if v == i64::from(walked) => Ok(()),
                Some(v) => bail!(
                    "v8dbg_{} is {v}, not {walked} where the kernel walk reads it",
                    names[0]
                ),
                None => bail!("no v8dbg_{} symbol", names[0]),
            }
        };
        let version = (need("version_major")? as u32, need("version_minor")? as u32);
        if version < (9, 0) {
            bail!(
                "V8 {}.{} predates the layouts sockleak reads (9.0)",
                version.0,
                version.1
            );
        }

        frame(&["off_fp_function"], None, V8_FP_FUNCTION)?;
        frame(
            &["off_fp_context", "off_fp_context_or_frame_type"],
            None,
            V8_FP_CONTEXT,
        )?;
        // Exported since V8 9.5; before, three words below the function.
        let fallback = get("off_fp_function").map(|f| f - 3 * POINTER as i64);
        frame(&["off_fp_bytecode_offset"], fallback, V8_FP_BYTECODE_OFFSET)?;
        let function_type = ty("type_JSFunction__JS_FUNCTION_TYPE")?;
        let (first_function_type, last_function_type) =
            match (get("FirstJSFunctionType"), get("LastJSFunctionType")) {
                (Some(first), Some(last)) => (first as u16, last as u16),
                // Since V8 9.6 fifteen types (class constructors and the like) follow JSFunction's.
                _ => (function_type, function_type + 14),
            };
        let kernel = V8Layout {
            object_map: offset_or("class_HeapObject__map__Map", 0)? as u16,
            map_instance_type: offset("class_Map__instance_type__uint16_t")? as u16,
            function_shared: offset("class_JSFunction__shared__SharedFunctionInfo")? as u16,
            first_function_type,
            last_function_type,
            _pad: [0; 3],
            native_api_call: [0; 2],
        };
        let strings = Strings {
            first_nonstring_type: ty("FirstNonstringType")?,
            representation_mask: ty("StringRepresentationMask")?,
            encoding_mask: ty("StringEncodingMask")?,
            seq_tag: get("SeqStringTag").unwrap_or(0) as u16,
            cons_tag: ty("ConsStringTag")?,
            thin_tag: ty("ThinStringTag")?,
            sliced_tag: ty("SlicedStringTag")?,
            one_byte_tag: ty("OneByteStringTag")?,
            length: offset("class_String__length__int32_t")?,
            one_byte_chars: offset("class_SeqOneByteString__chars__char")?,
            two_byte_chars: offset("class_SeqTwoByteString__chars__char")?,
            cons_first: offset("class_ConsString__first__String")?,
            cons_second: offset("class_ConsString__second__String")?,
            thin_actual: offset("class_ThinString__actual__String")?,
            sliced_parent: offset("class_SlicedString__parent__String")?,
            sliced_offset: offset("class_SlicedString__offset__SMI")?,
        };
        let types = Types {
            shared_function_info: ty("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")?,
            scope_info: ty("type_ScopeInfo__SCOPE_INFO_TYPE")?,
            script: ty("type_Script__SCRIPT_TYPE")?,
            bytecode_array: ty("type_BytecodeArray__BYTECODE_ARRAY_TYPE")?,
            byte_array: ty("type_ByteArray__BYTE_ARRAY_TYPE")?,
            fixed_array: ty("type_FixedArray__FIXED_ARRAY_TYPE")?,
        };
        let fixed_array_length = offset("class_FixedArrayBase__length__SMI")?;
        let bytecode_array_source_positions = offset_or(
            "class_BytecodeArray__source_position_table__Object",
            // Not exported since V8 9.4; three words after the length since long before.
            fixed_array_length + 3 * POINTER,
        )?;
        let script_name = offset("class_Script__name__Object")?;
        Ok(Self {
            version,
            kernel,
            strings,
            types,
            shared_name_or_scope_info: any_of(&[
                "class_SharedFunctionInfo__name_or_scope_info__Object",
                "class_SharedFunctionInfo__name_or_scope_info__Tagged_Object_",
            ])?,
            // Dropped from the metadata in V8 12; a word after the map since long before.
            shared_function_data: offset_or(
                "class_SharedFunctionInfo__function_data__Object",
                POINTER,
            )?,
            shared_script: any_of(&[
                "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
                "class_SharedFunctionInfo__script_or_debug_info__Object",
                "class_SharedFunctionInfo__script__Tagged_HeapObject_",
            ])?,
            script_name,
            script_source: offset_or("class_Script__source__Object", script_name - POINTER)?,
            fixed_array_length,
            bytecode_array_data: offset("class_BytecodeArray__data__uintptr_t")?,
            bytecode_array_source_positions,
            scope_info_first_vars: offset("scopeinfo_idx_first_vars")?,
            scope_info_context_locals: offset("scopeinfo_idx_ncontextlocals")?,
            scope_info_fixed_positions: version >= (12, 8),
        })
    }
}

/// What a binary's symbols say of its V8.
struct Symbols {
    /// The `v8dbg_*` values (without the prefix) and V8's version (as `version_major` and
    /// `version_minor`), each an `int` in the file's data.
    values: HashMap<String, i64>,
    /// Where `Builtins::InvokeApiFunction`'s code is, in a binary loaded where it was linked
    /// (an executable, not a position-independent one: those move per process).
    native_api_call: Option<[u64; 2]>,
}

/// `v8::internal::Builtins::InvokeApiFunction`, whatever its parameters.
const INVOKE_API_FUNCTION: &str = "_ZN2v88internal8Builtins17InvokeApiFunction";

/// The symbols of the ELF file at `path`. Read in place: node is a hundred megabytes.
fn read_symbols(path: &Path) -> Result<Symbols> {
    let cache = ReadCache::new(File::open(path).context("opening it")?);
    let elf = ElfFile64::<Endianness, _>::parse(&cache).context("reading it as ELF")?;
    let linked_in_place = elf.kind() == ObjectKind::Executable;
    let mut values = HashMap::new();
    let mut native_api_call = None;
    for table in [Table::Dynamic, Table::Full] {
        let _ = each_defined(&elf, table, |symbol| {
            let name = symbol.name;
            if name.starts_with(INVOKE_API_FUNCTION) && symbol.size > 0 && linked_in_place {
                native_api_call.get_or_insert([symbol.address, symbol.address + symbol.size]);
                return ControlFlow::Continue(());
            }
            let key = match name {
                "_ZN2v88internal7Version6major_E" => "version_major".to_owned(),
                "_ZN2v88internal7Version6minor_E" => "version_minor".to_owned(),
                _ => match name.strip_prefix("v8dbg_") {
                    Some(rest) => rest.to_owned(),
                    None => return ControlFlow::Continue(()),
                },
            };
            if values.contains_key(&key) {
                return ControlFlow::Continue(());
            }
            let Ok(section) = elf.section_by_index(symbol.section) else {
                return ControlFlow::Continue(());
            };
            // A symbol in .bss (no file data) is an int whose value is zero.
            let value = match section.data_range(symbol.address, 4) {
                Ok(Some(&[a, b, c, d])) => i64::from(i32::from_le_bytes([a, b, c, d])),
                _ => 0,
            };
            values.insert(key, value);
            ControlFlow::Continue(())
        });
        if values.contains_key("off_fp_function") {
            break;
        }
    }
    if values.is_empty() {
        return Err(NoV8Symbols.into());
    }
    Ok(Symbols {
        values,
        native_api_call,
    })
}

/// A binary without a single `v8dbg_` symbol: not V8 at all (a C program that links libuv),
/// or V8 elsewhere (a distribution's node, in `libnode.so`).
#[derive(Debug)]
pub struct NoV8Symbols;

impl std::fmt::Display for NoV8Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no V8 postmortem symbols (v8dbg_*)")
    }
}

impl std::error::Error for NoV8Symbols {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Node 20's values (V8 11.3), as its binary exports them.
    pub(crate) fn node20() -> HashMap<String, i64> {
        [
            ("version_major", 11),
            ("version_minor", 3),
            ("off_fp_function", -16),
            ("off_fp_context", -8),
            ("off_fp_bytecode_offset", -40),
            ("class_HeapObject__map__Map", 0),
            ("class_Map__instance_type__uint16_t", 12),
            ("class_JSFunction__shared__SharedFunctionInfo", 24),
            ("type_JSFunction__JS_FUNCTION_TYPE", 2066),
            ("FirstNonstringType", 128),
            ("StringRepresentationMask", 7),
            ("StringEncodingMask", 8),
            ("SeqStringTag", 0),
            ("ConsStringTag", 1),
            ("ThinStringTag", 5),
            ("SlicedStringTag", 3),
            ("OneByteStringTag", 8),
            ("class_String__length__int32_t", 12),
            ("class_SeqOneByteString__chars__char", 16),
            ("class_SeqTwoByteString__chars__char", 16),
            ("class_ConsString__first__String", 16),
            ("class_ConsString__second__String", 24),
            ("class_ThinString__actual__String", 16),
            ("class_SlicedString__parent__String", 16),
            ("class_SlicedString__offset__SMI", 24),
            ("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE", 262),
            ("type_ScopeInfo__SCOPE_INFO_TYPE", 261),
            ("type_Script__SCRIPT_TYPE", 167),
            ("type_BytecodeArray__BYTECODE_ARRAY_TYPE", 191),
            ("type_ByteArray__BYTE_ARRAY_TYPE", 190),
            ("type_FixedArray__FIXED_ARRAY_TYPE", 175),
            ("class_FixedArrayBase__length__SMI", 8),
            ("class_FixedArray__data__uintptr_t", 16),
            ("class_BytecodeArray__data__uintptr_t", 54),
            ("class_SharedFunctionInfo__name_or_scope_info__Object", 16),
            ("class_SharedFunctionInfo__function_data__Object", 8),
            (
                "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
                32,
            ),
            ("class_Script__name__Object", 16),
            ("class_Script__source__Object", 8),
            ("scopeinfo_idx_first_vars", 3),
            ("scopeinfo_idx_ncontextlocals", 2),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    #[test]
    fn node_20s_symbols_give_its_layout() {
        let layout = Layout::from_symbols(&node20()).unwrap();
        assert_eq!(layout.version, (11, 3));
        assert_eq!(
            layout.kernel,
            V8Layout {
                object_map: 0,
                map_instance_type: 12,
                function_shared: 24,
                first_function_type: 2066,
                last_function_type: 2080,
                _pad: [0; 3],
                native_api_call: [0; 2],
            }
        );
        assert_eq!(layout.bytecode_array_source_positions, 32);
        assert!(!layout.scope_info_fixed_positions);
    }

    #[test]
    fn a_missing_symbol_is_named_and_a_frame_slot_outside_the_window_refused() {
        let mut symbols = node20();
        symbols.remove("class_JSFunction__shared__SharedFunctionInfo");
        let err = Layout::from_symbols(&symbols).unwrap_err().to_string();
        assert!(
            err.contains("v8dbg_class_JSFunction__shared__SharedFunctionInfo"),
            "{err}"
        );
        let mut symbols = node20();
        symbols.insert("off_fp_function".into(), -24);
        let err = Layout::from_symbols(&symbols).unwrap_err().to_string();
        assert!(
            err.contains("not -16 where the kernel walk reads it"),
            "{err}"
        );
        let mut symbols = node20();
        symbols.insert("version_major".into(), 8);
        assert!(Layout::from_symbols(&symbols).is_err());
    }

    #[test]
    fn dropped_symbols_fall_back_to_their_known_offsets() {
        let mut symbols = node20();
        symbols.remove("off_fp_bytecode_offset");
        symbols.remove("class_SharedFunctionInfo__function_data__Object");
        symbols.remove("class_Script__source__Object");
        let layout = Layout::from_symbols(&symbols).unwrap();
        assert_eq!(layout.shared_function_data, 8);
        assert_eq!(layout.script_source, 8);
    }

    /// The node the test suite installs (Debian's, an executable linked where it loads).
    #[test]
    fn an_installed_nodes_binary_says_where_v8_calls_native_functions_from_native_code() {
        let node = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("node"))
            .find(|path| path.is_file())
            .expect("node installed (setup.sh installs it)");
        let layout = Layout::of_binary(&node).unwrap();
        let [start, end] = layout.kernel.native_api_call;
        assert!(start > 0 && end > start, "{:?}", layout.kernel);
    }
}
